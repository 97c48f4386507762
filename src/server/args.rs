//! Tool arguments that fail with our own error body.
//!
//! rmcp's `Parameters<T>` turns a deserialization failure into a bare text
//! error. `Args<T>` takes the raw argument object instead (so rmcp never
//! fails), keeps `T`'s JSON Schema for `tools/list`, and parses inside the
//! tool, where a failure becomes `INVALID_PARAMETERS` naming the field.

use std::marker::PhantomData;

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock, JsonObject};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::Error;

pub struct Args<T> {
    raw: JsonObject,
    _t: PhantomData<fn() -> T>,
}

impl<'de, T> Deserialize<'de> for Args<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Args {
            raw: JsonObject::deserialize(d)?,
            _t: PhantomData,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Args<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

impl<T: DeserializeOwned + JsonSchema> Args<T> {
    /// Parse into `T`; a failure becomes `INVALID_PARAMETERS` with the
    /// offending field's path. The arguments were already checked against
    /// the tool's published schema (every bad field at once) when the call
    /// came in (`MyrmexServer::call_tool`, server::contract), so only serde's
    /// own parse is left here.
    pub fn parse(self) -> Result<T, Error> {
        crate::model::bounds::deserialize_value(serde_json::Value::Object(self.raw))
    }
}

/// A tool error: `isError: true` with the body `{"error": {...}}` as JSON text.
///
/// It is deliberately not `structuredContent`: clients such as the MCP
/// Inspector (TypeScript SDK) validate any `structuredContent` against the
/// tool's `outputSchema`, which describes the success shape only.
impl IntoCallToolResult for Error {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(self.to_body().to_string())]).into())
    }
}

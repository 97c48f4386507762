//! Who calls, and the ids of what they make.

use serde::Serialize;

/// Who is calling. stdio callers are [`Principal::local`]; HTTP callers are
/// named by their bearer token (or local when no tokens are configured).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Principal(pub String);

impl Principal {
    pub const LOCAL: &'static str = "local";

    pub fn local() -> Self {
        Principal(Self::LOCAL.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A new random id with a type prefix: `ses_3f2a...` (32 hex digits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

//! Answer-size policy, one piece for every tool: views are shortened to fit
//! `limits.max_result_bytes` (with room for the envelope) before they are
//! answered, an error's details give way before its message, and the last
//! guard replaces a read-only answer still too large by RESULT_TOO_LARGE
//! (a changing call keeps its answer, its long strings cut).

use rmcp::ErrorData;
use rmcp::model::CallToolResponse;

use super::MyrmexServer;
use crate::engine::tasks::TaskView;
use crate::engine::workflows::RunView;
use crate::error::{Error, ErrorCode};

/// A view that can shorten itself to a byte budget (what it drops, it says).
pub trait Fits {
    fn fit(&mut self, budget: usize);
}

impl Fits for RunView {
    fn fit(&mut self, budget: usize) {
        RunView::fit(self, budget);
    }
}

impl Fits for TaskView {
    fn fit(&mut self, budget: usize) {
        TaskView::fit(self, budget);
    }
}

impl MyrmexServer {
    /// A view shortened to fit the answer limit (with room for the envelope).
    pub(crate) fn fitted<T: Fits>(&self, mut v: T) -> T {
        v.fit(self.engine.config().limits.max_result_bytes * 9 / 10);
        v
    }
}

impl MyrmexServer {
    /// The last guard of `limits.max_result_bytes`: tools page and split their
    /// answers to stay under it; one still larger is replaced by a
    /// RESULT_TOO_LARGE error saying how to ask for less.
    pub(crate) fn bounded(
        &self,
        tool: &str,
        result: Result<CallToolResponse, ErrorData>,
    ) -> Result<CallToolResponse, ErrorData> {
        let cap = self.engine.config().limits.max_result_bytes;
        let result = bound_error(result, cap);
        // The text block is the structured content already written out
        // (rmcp's `Json` answers carry both): its length is the answer's size,
        // without writing the value out once more to measure it.
        let size = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error != Some(true) => {
                let text = match r.content.as_slice() {
                    [block] => block.as_text(),
                    _ => None,
                };
                match (&r.structured_content, text) {
                    (Some(_), Some(t)) => t.text.len(),
                    (Some(v), None) => serde_json::to_string(v).map_or(0, |s| s.len()),
                    (None, _) => 0,
                }
            }
            _ => 0,
        };
        if size <= cap {
            return result;
        }
        // A call that changed state keeps its answer: an error would say it did not.
        let read_only = self
            .tool_router
            .get(tool)
            .and_then(|t| t.annotations.as_ref())
            .and_then(|a| a.read_only_hint)
            .unwrap_or(false);
        if !read_only {
            // Its long strings are cut instead (types stay as declared).
            let Ok(CallToolResponse::Complete(mut r)) = result else {
                return result;
            };
            if let Some(v) = r.structured_content.as_mut() {
                cut_strings(v, cap);
                r.content = vec![rmcp::model::ContentBlock::text(v.to_string())];
            }
            tracing::warn!(
                tool,
                size,
                cap,
                "long strings of a changing call's answer cut"
            );
            return Ok(CallToolResponse::Complete(r));
        }
        tracing::warn!(tool, size, cap, "answer too large; replaced by an error");
        use rmcp::handler::server::tool::IntoCallToolResult as _;
        Error::new(
            ErrorCode::ResultTooLarge,
            format!("the answer of {tool} would be {size} bytes; the limit is {cap} (limits.max_result_bytes)"),
            "Ask for less: a smaller limit, a cursor page, filters (status, tag), or fewer steps shown; get_* tools read one object in full.",
        )
        .into_call_tool_result()
    }
}

/// An error answer stays under the answer limit too: its details give way
/// first (message and hint are bounded when the error is made).
fn bound_error(
    result: Result<CallToolResponse, ErrorData>,
    cap: usize,
) -> Result<CallToolResponse, ErrorData> {
    let Ok(CallToolResponse::Complete(mut r)) = result else {
        return result;
    };
    if r.is_error == Some(true) {
        let size: usize = r
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.len()))
            .sum();
        if size > cap
            && let Some(text) = r.content.first().and_then(|c| c.as_text())
            && let Ok(mut body) = serde_json::from_str::<serde_json::Value>(&text.text)
        {
            body["error"]["details"] = serde_json::json!({
                "omitted": format!("the details were {size} bytes, more than limits.max_result_bytes ({cap})")
            });
            cut_strings(&mut body, cap);
            r.content = vec![rmcp::model::ContentBlock::text(body.to_string())];
        }
    }
    Ok(CallToolResponse::Complete(r))
}

/// Cut the longest strings of `v` (to 200 characters and a marker saying
/// how much was cut) until it is at most `cap` bytes of JSON, or no string
/// longer than 512 bytes is left.
fn cut_strings(v: &mut serde_json::Value, cap: usize) {
    fn longest(v: &mut serde_json::Value) -> Option<&mut String> {
        match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Array(a) => a.iter_mut().filter_map(longest).max_by_key(|s| s.len()),
            serde_json::Value::Object(o) => {
                o.values_mut().filter_map(longest).max_by_key(|s| s.len())
            }
            _ => None,
        }
    }
    while v.to_string().len() > cap {
        let Some(s) = longest(v).filter(|s| s.len() > 512) else {
            return;
        };
        let keep = crate::engine::workflows::char_prefix(s, 200).len();
        let cut = s.len() - keep;
        s.truncate(keep);
        s.push_str(&format!(
            "… [{cut} bytes cut: answers stay under limits.max_result_bytes; the full value is kept]"
        ));
    }
}

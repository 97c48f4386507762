//! One error type for the whole crate, with stable machine codes.
//!
//! Every failure an MCP caller can see is an [`Error`]: a [`ErrorCode`] that
//! never changes meaning, a message saying what went wrong, a hint saying what
//! to do next, and optional structured details. The server turns it into a
//! tool result with `isError: true` and the body
//! `{"error": {"code", "message", "hint", "details"}}`.

use serde::Serialize;
use serde_json::Value;

/// Stable error codes. The first eight are the original specification's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Arguments are missing, malformed, of the wrong type, unknown or out of range.
    InvalidParameters,
    /// A requested resource pool or lock cannot be granted.
    ResourceUnavailable,
    /// A step or task names a module/action that does not exist or is disabled.
    ModuleNotFound,
    /// No workflow definition with that name.
    WorkflowNotFound,
    /// A project with that name already exists.
    ProjectExists,
    /// The caller may not do this.
    PermissionDenied,
    /// A deadline passed.
    TimeoutExceeded,
    /// An upstream dependency failed.
    DependencyFailed,
    /// No such object visible to this caller.
    NotFound,
    /// The object's current state does not allow the operation.
    Conflict,
    /// The session is closed; open a new one.
    SessionClosed,
    /// A configured limit would be exceeded.
    LimitExceeded,
    /// A dependency edge would close a cycle.
    CycleDetected,
    /// The store cannot be reached or written right now.
    StoreUnavailable,
    /// A step's or task's action reported a failure.
    ActionFailed,
    /// The operation was cancelled.
    Cancelled,
    /// The caller does not hold the task's lease (expired, taken over, or another agent's).
    LeaseNotHeld,
    /// No project template with that name.
    TemplateNotFound,
    /// The answer would be larger than `limits.max_result_bytes`.
    ResultTooLarge,
    /// A bug or an unexpected condition inside myrmex.
    InternalError,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidParameters,
        ErrorCode::ResourceUnavailable,
        ErrorCode::ModuleNotFound,
        ErrorCode::WorkflowNotFound,
        ErrorCode::ProjectExists,
        ErrorCode::PermissionDenied,
        ErrorCode::TimeoutExceeded,
        ErrorCode::DependencyFailed,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::SessionClosed,
        ErrorCode::LimitExceeded,
        ErrorCode::CycleDetected,
        ErrorCode::StoreUnavailable,
        ErrorCode::ActionFailed,
        ErrorCode::Cancelled,
        ErrorCode::LeaseNotHeld,
        ErrorCode::TemplateNotFound,
        ErrorCode::ResultTooLarge,
        ErrorCode::InternalError,
    ];

    /// The wire form, e.g. `INVALID_PARAMETERS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameters => "INVALID_PARAMETERS",
            ErrorCode::ResourceUnavailable => "RESOURCE_UNAVAILABLE",
            ErrorCode::ModuleNotFound => "MODULE_NOT_FOUND",
            ErrorCode::WorkflowNotFound => "WORKFLOW_NOT_FOUND",
            ErrorCode::ProjectExists => "PROJECT_EXISTS",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::TimeoutExceeded => "TIMEOUT_EXCEEDED",
            ErrorCode::DependencyFailed => "DEPENDENCY_FAILED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::SessionClosed => "SESSION_CLOSED",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::CycleDetected => "CYCLE_DETECTED",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::ActionFailed => "ACTION_FAILED",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::LeaseNotHeld => "LEASE_NOT_HELD",
            ErrorCode::TemplateNotFound => "TEMPLATE_NOT_FOUND",
            ErrorCode::ResultTooLarge => "RESULT_TOO_LARGE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// One line saying when the code is used (for the generated specification).
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameters => {
                "Arguments are missing, malformed, of the wrong type, unknown or out of range."
            }
            ErrorCode::ResourceUnavailable => "Requested resources cannot be granted.",
            ErrorCode::ModuleNotFound => {
                "The named module or action does not exist or is disabled."
            }
            ErrorCode::WorkflowNotFound => "No workflow definition with that name.",
            ErrorCode::ProjectExists => "A project with that name already exists.",
            ErrorCode::PermissionDenied => "The caller may not perform this operation.",
            ErrorCode::TimeoutExceeded => "A deadline passed before the work finished.",
            ErrorCode::DependencyFailed => "An upstream dependency failed.",
            ErrorCode::NotFound => "No such object is visible to this caller.",
            ErrorCode::Conflict => "The object's current state does not allow the operation.",
            ErrorCode::SessionClosed => "The session is closed; create or use another session.",
            ErrorCode::LimitExceeded => "A configured limit would be exceeded.",
            ErrorCode::CycleDetected => "A dependency would close a cycle.",
            ErrorCode::StoreUnavailable => "The durable store cannot be read or written right now.",
            ErrorCode::ActionFailed => "A step's or task's action reported a failure.",
            ErrorCode::Cancelled => "The operation was cancelled.",
            ErrorCode::LeaseNotHeld => {
                "The caller does not hold the task's lease: it expired, was never granted, or is another agent's."
            }
            ErrorCode::TemplateNotFound => "No project template with that name.",
            ErrorCode::ResultTooLarge => {
                "The answer would exceed limits.max_result_bytes; ask for a smaller page or fewer fields."
            }
            ErrorCode::InternalError => "An unexpected condition inside myrmex.",
        }
    }
}

/// Longest message or hint an error answer carries, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2000;

/// Longest excerpt of caller input that a message quotes, in bytes.
pub const EXCERPT_BYTES: usize = 120;

/// At most the first `max` bytes of `s`, ending on a character boundary.
pub fn char_prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` as a message may quote it: whole when short, else its first
/// [`EXCERPT_BYTES`] and how much was left out. Messages never repeat what a
/// caller sent in full (an 8 MiB name comes back as 120 bytes and a count).
pub fn excerpt(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= EXCERPT_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let head = char_prefix(s, EXCERPT_BYTES);
    std::borrow::Cow::Owned(format!("{head}… (+{} bytes)", s.len() - head.len()))
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with a stable code, an actionable message and a hint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub hint: String,
    pub details: Option<Value>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: hint.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameters, message, hint)
    }

    pub fn not_found(what: &str, id: &str, hint: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("{what} '{id}' not found"),
            hint,
        )
        .with_details(serde_json::json!({ "kind": what, "id": id }))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InternalError,
            message,
            "This is a bug in myrmex; retry once, and report it with the server's log if it persists.",
        )
    }

    /// The JSON body sent to callers. Message and hint are cut at
    /// [`MAX_MESSAGE_BYTES`] (what they quote of a caller's input is an
    /// excerpt already; this is the last guard).
    pub fn to_body(&self) -> Value {
        let cut = |s: &str| -> String {
            if s.len() <= MAX_MESSAGE_BYTES {
                return s.to_string();
            }
            let head = char_prefix(s, MAX_MESSAGE_BYTES);
            format!("{head}… (+{} bytes)", s.len() - head.len())
        };
        serde_json::json!({
            // The original module's check, on every error answer.
            "success": false,
            "error": {
                "code": self.code,
                "message": cut(&self.message),
                "hint": cut(&self.hint),
                "details": self.details,
            }
        })
    }
}

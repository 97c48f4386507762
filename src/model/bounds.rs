//! Measuring caller-made values before they are used: JSON depth and size
//! without recursion or allocation, and deadlines that cannot overflow.

use std::time::Duration;

use serde_json::Value;

// Fixed limits (not configurable): the checks read them from here, and the
// published schemas too (server::contract), so the two cannot drift.

/// Most retries a step or task may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Longest delay of a retry policy (`initial_delay_ms`, `max_delay_ms`): one hour.
pub const MAX_RETRY_DELAY_MS: u64 = 3_600_000;
/// The range of a retry policy's `multiplier`.
pub const RETRY_MULTIPLIER: (f64, f64) = (1.0, 10.0);
/// Longest task timeout: one week.
pub const MAX_TASK_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;
/// Longest session timeout: a year.
pub const MAX_SESSION_TIMEOUT_SECONDS: u64 = 365 * 24 * 3600;
/// Most tasks of a session running at once, and most steps of a run.
pub const MAX_PARALLEL_TASKS: u32 = 1024;
/// Most runs of a session at once.
pub const MAX_PARALLEL_WORKFLOWS: u32 = 256;
/// Largest page of `get_events`.
pub const MAX_EVENT_PAGE: u32 = 1000;
/// The window of `get_system_status`'s `time_range_hours`: a month.
pub const MAX_TIME_RANGE_HOURS: u32 = 720;

/// The largest amount of a pool one request may name (10^12, well within
/// what a JSON number carries exactly).
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;

/// The schema of a field that takes any JSON value (a type on it all the
/// same: clients that find none turn the field into a string).
pub fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["string", "number", "boolean", "object", "array", "null"]})
}

/// The schema of a free-form JSON object.
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "additionalProperties": true})
}

/// A retry policy's problem, if any: one check for steps and tasks.
pub fn retry_problem(multiplier: f64, initial_delay_ms: u64, max_delay_ms: u64) -> Option<String> {
    let (lo, hi) = RETRY_MULTIPLIER;
    let mut why = Vec::new();
    if !(lo..=hi).contains(&multiplier) {
        why.push(format!(
            "retry.multiplier is {multiplier}; it must be between {lo} and {hi}"
        ));
    }
    for (f, v) in [
        ("initial_delay_ms", initial_delay_ms),
        ("max_delay_ms", max_delay_ms),
    ] {
        if v > MAX_RETRY_DELAY_MS {
            why.push(format!(
                "retry.{f} is {v}; it must be at most {MAX_RETRY_DELAY_MS}"
            ));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// How deeply `v` nests (a scalar is 0, `[1]` is 1), counted without
/// recursion, so a value of any depth is measured safely. Stops counting
/// once `stop_at` is passed (the answer is then `stop_at + 1`).
pub fn value_depth(v: &Value, stop_at: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) if !a.is_empty() => Box::new(a.iter()),
            Value::Object(o) if !o.is_empty() => Box::new(o.values()),
            Value::Array(_) | Value::Object(_) => {
                deepest = deepest.max(d + 1);
                continue;
            }
            _ => continue,
        };
        let d = d + 1;
        deepest = deepest.max(d);
        if deepest > stop_at {
            return deepest;
        }
        stack.extend(children.map(|c| (c, d)));
    }
    deepest
}

/// Bytes of `v` as compact JSON, counted without building the text.
pub fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Check the shape of `v` against `T`'s JSON Schema where serde is more
/// lenient than the schema it publishes: serde builds a struct from a JSON
/// array (`"retry": [1]`), the schema says object. Only types, enums and
/// bounds are checked here (serde already decided on unknown and missing
/// fields, aliases included). Returns the first violation as `path: what`.
pub fn check_shape<T: schemars::JsonSchema>(v: &Value) -> Result<(), String> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let key = std::any::type_name::<T>();
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned();
    let validator = match cached {
        Some(v) => v,
        None => {
            let mut schema = serde_json::to_value(
                schemars::generate::SchemaSettings::draft2020_12()
                    .into_generator()
                    .into_root_schema_for::<T>(),
            )
            .unwrap_or(Value::Bool(true));
            loosen(&mut schema);
            let built = jsonschema::options()
                .should_validate_formats(false)
                .build(&schema)
                .map_err(|e| format!("internal schema error for {key}: {e}"))?;
            let built = Arc::new(built);
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, built.clone());
            built
        }
    };
    match validator.iter_errors(v).next() {
        None => Ok(()),
        Some(e) => {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() {
                "arguments".into()
            } else {
                at
            };
            let what = match e.kind() {
                jsonschema::error::ValidationErrorKind::Type { kind } => {
                    format!("must be of type {kind:?}").to_lowercase()
                }
                _ => crate::error::excerpt(&e.to_string()).into_owned(),
            };
            Err(format!("{at}: {what}"))
        }
    }
}

const ARGS_HINT: &str =
    "Check the arguments against this tool's inputSchema (tools/list); unknown fields are refused.";

/// Parse a JSON value into `T` as tool arguments are parsed: serde first (its
/// messages name the expected variants and fields), then what serde lets
/// through but `T`'s schema forbids (an array for an object).
pub fn parse_value<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    value: Value,
) -> Result<T, crate::error::Error> {
    let shape = check_shape::<T>(&value);
    let parsed: T = deserialize_value(value)?;
    if let Err(e) = shape {
        let (path, what) = e.split_once(": ").unwrap_or(("", &e));
        let field = crate::error::excerpt(&field_path(path)).into_owned();
        return Err(crate::error::Error::invalid(
            format!("invalid argument '{field}': {what}"),
            ARGS_HINT,
        )
        .with_details(serde_json::json!({ "field": field })));
    }
    Ok(parsed)
}

/// Deserialize a JSON value into `T`, a failure as INVALID_PARAMETERS naming
/// the field. The shape is not checked: for arguments the published schema
/// already was (server::contract).
pub fn deserialize_value<T: serde::de::DeserializeOwned>(
    value: Value,
) -> Result<T, crate::error::Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = crate::error::excerpt(&e.into_inner().to_string()).into_owned();
        let message = if path == "." || path.is_empty() {
            format!("invalid arguments: {inner}")
        } else {
            format!(
                "invalid argument '{}': {inner}",
                crate::error::excerpt(&path)
            )
        };
        crate::error::Error::invalid(message, ARGS_HINT)
            .with_details(serde_json::json!({ "field": crate::error::excerpt(&path) }))
    })
}

/// A JSON pointer (`/steps/0/retry`) as a caller writes the field: `steps[0].retry`.
pub fn field_path(pointer: &str) -> String {
    let mut field = String::new();
    for seg in pointer.trim_start_matches('/').split('/') {
        if seg.is_empty() {
            continue;
        }
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{seg}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&seg);
        }
    }
    field
}

/// Drop `additionalProperties: false` and `required` everywhere in a schema.
fn loosen(s: &mut Value) {
    let mut stack = vec![s];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                if o.get("additionalProperties") == Some(&Value::Bool(false)) {
                    o.remove("additionalProperties");
                }
                o.remove("required");
                stack.extend(o.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
}

/// About thirty years: what "never" means for a deadline.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + d`, saturating at a far future instead of overflowing (a caller's
/// `timeout_seconds` of 2^63 is a deadline that never comes, not a panic).
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d.min(FAR))
        .unwrap_or_else(|| now + Duration::from_secs(3600))
}

/// `secs` seconds as milliseconds, saturating.
pub fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_is_counted_without_recursion() {
        assert_eq!(value_depth(&json!(1), 10), 0);
        assert_eq!(value_depth(&json!([]), 10), 1);
        assert_eq!(value_depth(&json!({"a": [1, {"b": {}}]}), 10), 4);
        // Far deeper than any stack could recurse.
        let mut deep = json!(1);
        for _ in 0..200_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(value_depth(&deep, 64), 65);
        assert_eq!(value_depth(&deep, usize::MAX), 200_000);
        // Dropping it must not recurse either: take it apart by hand.
        let mut v = deep;
        while let Value::Array(mut a) = v {
            v = a.pop().unwrap_or(Value::Null);
        }
    }

    /// A definition's shape in small: a struct inside a struct, and an alias.
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Retry {
        #[serde(default)]
        multiplier: f64,
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct StepSpec {
        name: String,
        module: String,
        action: String,
        #[serde(default)]
        retry: Option<Retry>,
        #[serde(default, alias = "timeout")]
        timeout_seconds: Option<u64>,
    }

    #[test]
    fn shapes_follow_the_schema_not_serde() {
        let ok = json!({"name": "a", "module": "core", "action": "echo", "retry": {"multiplier": 2.0}, "timeout": 3});
        assert_eq!(check_shape::<StepSpec>(&ok), Ok(()));
        // serde would build a RetryPolicy (and a StepSpec) from arrays.
        let bad = json!({"name": "a", "module": "core", "action": "echo", "retry": [1]});
        assert!(serde_json::from_value::<StepSpec>(bad.clone()).is_ok());
        let e = check_shape::<StepSpec>(&bad).unwrap_err();
        assert!(e.starts_with("/retry"), "{e}");
        assert!(check_shape::<StepSpec>(&json!(["a", "core", "echo"])).is_err());
    }

    #[test]
    fn sizes_and_deadlines() {
        let v = json!({"a": [1, "xy"], "b": null});
        assert_eq!(json_size(&v), v.to_string().len());
        let d = deadline_after(Duration::from_secs(u64::MAX));
        assert!(d > tokio::time::Instant::now() + Duration::from_secs(3000));
        assert_eq!(secs_to_ms(u64::MAX), i64::MAX);
        assert_eq!(secs_to_ms(2), 2000);
    }
}

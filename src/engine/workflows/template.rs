//! `{{ ... }}` references in step parameters and `when` conditions.
//!
//! Forms: `{{params.x}}`, `{{steps.<name>.output}}`, `{{steps.<name>.output.field.sub[0]}}`,
//! `{{steps.<name>.status}}`, `{{tasks.<name or id>.result}}` (task graphs), `{{run.id}}`, `{{session.id}}`,
//! `{{project.path}}` / `{{project.name}}` / `{{project.config...}}` (project runs), and the original
//! specification's `{{<step>.output}}` and `${<step>.result}`. A string that is
//! exactly one reference takes the referenced value with its JSON type; a
//! reference inside longer text is rendered as text. `\{{` is a literal `{{`.

use serde_json::Value;

/// One step of a path into a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// What a reference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Param {
        name: String,
        path: Vec<Seg>,
    },
    StepOutput {
        step: String,
        path: Vec<Seg>,
    },
    StepStatus {
        step: String,
    },
    RunId,
    SessionId,
    /// `{{project.path}}`, `{{project.name}}`, `{{project.config...}}`: the run's project.
    Project {
        path: Vec<Seg>,
    },
}

impl Ref {
    /// The step this reference reads, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Ref::StepOutput { step, .. } | Ref::StepStatus { step } => Some(step),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Ref(Ref, String),
}

/// A parsed string: text and references.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Where references are looked up at run time.
pub trait Scope {
    fn param(&self, name: &str) -> Option<&Value>;
    /// `(status, output)` of a step; output is None until it succeeded.
    fn step(&self, name: &str) -> Option<(String, Option<&Value>)>;
    fn run_id(&self) -> &str;
    fn session_id(&self) -> &str;
    /// The project the run works on (`{id, name, path, config, ...}`), if any.
    fn project(&self) -> Option<&Value> {
        None
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("\\{{") {
                text.push_str("{{");
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{{") {
                let end = r.find("}}").ok_or_else(|| {
                    format!("'{{{{' without '}}}}' in \"{}\"", crate::error::excerpt(s))
                })?;
                let expr = &r[..end];
                let reference = parse_ref(expr.trim(), false)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Ref(reference, format!("{{{{{expr}}}}}")));
                rest = &r[end + 2..];
            } else if let Some(r) = rest.strip_prefix("${") {
                let end = r.find('}').ok_or_else(|| {
                    format!("'${{' without '}}' in \"{}\"", crate::error::excerpt(s))
                })?;
                let expr = &r[..end];
                let reference = parse_ref(expr.trim(), true)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Ref(reference, format!("${{{expr}}}")));
                rest = &r[end + 1..];
            } else {
                let c = rest.chars().next().expect("non-empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { pieces })
    }

    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Ref(r, _) => Some(r),
            Piece::Text(_) => None,
        })
    }

    pub fn has_refs(&self) -> bool {
        self.refs().next().is_some()
    }

    /// Render: one whole reference keeps its JSON type; otherwise text.
    pub fn render(&self, scope: &dyn Scope) -> Result<Value, String> {
        self.render_within(scope, &mut Budget::unlimited())
            .map_err(RenderError::into_message)
    }

    /// Render, taking what it produces from `budget`.
    fn render_within(&self, scope: &dyn Scope, budget: &mut Budget) -> Result<Value, RenderError> {
        if let [Piece::Ref(r, raw)] = self.pieces.as_slice() {
            let v = lookup(r, raw, scope).map_err(RenderError::Invalid)?;
            budget.take(crate::model::bounds::json_size(&v))?;
            return Ok(v.into_owned());
        }
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => {
                    budget.take(t.len())?;
                    out.push_str(t);
                }
                Piece::Ref(r, raw) => match lookup(r, raw, scope).map_err(RenderError::Invalid)? {
                    std::borrow::Cow::Borrowed(Value::String(s)) => {
                        budget.take(s.len())?;
                        out.push_str(s);
                    }
                    std::borrow::Cow::Owned(Value::String(s)) => {
                        budget.take(s.len())?;
                        out.push_str(&s);
                    }
                    v => {
                        budget.take(crate::model::bounds::json_size(&v))?;
                        out.push_str(&v.to_string());
                    }
                },
            }
        }
        Ok(Value::String(out))
    }
}

/// What rendering may produce: bytes (as JSON) in total.
pub struct Budget {
    left: usize,
    max: usize,
    /// The configuration key of the bound, for the refusal.
    key: &'static str,
}

impl Budget {
    /// At most `max` bytes of rendered values, configured as `key`.
    pub fn new(max: usize, key: &'static str) -> Self {
        Self {
            left: max,
            max,
            key,
        }
    }

    fn unlimited() -> Self {
        Self::new(usize::MAX, "")
    }

    fn take(&mut self, n: usize) -> Result<(), RenderError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(RenderError::TooLarge(format!(
                "the rendered parameters would exceed {} bytes ({}); nothing was run",
                self.max, self.key
            ))),
        }
    }
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderError {
    /// A reference that cannot be resolved.
    Invalid(String),
    /// The rendered value would pass its size bound.
    TooLarge(String),
}

impl RenderError {
    pub fn into_message(self) -> String {
        match self {
            RenderError::Invalid(m) | RenderError::TooLarge(m) => m,
        }
    }
}

/// Parse a reference expression such as `steps.a.output.x[0]` or, with
/// `dollar`, the original `a.result`.
pub fn parse_ref(expr: &str, dollar: bool) -> Result<Ref, String> {
    let segs = parse_path(expr)?;
    let key = |i: usize| match segs.get(i) {
        Some(Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let bad = || {
        format!(
            "'{}' is not a reference: use params.<name>, steps.<step>.output[.path], steps.<step>.status, tasks.<task>.result[.path], run.id, session.id or project.<path|name|config...>",
            crate::error::excerpt(expr)
        )
    };
    match key(0) {
        Some("params") => match key(1) {
            Some(name) => Ok(Ref::Param {
                name: name.into(),
                path: segs[2..].to_vec(),
            }),
            None => Err(bad()),
        },
        Some("run") if segs.len() == 2 && key(1) == Some("id") => Ok(Ref::RunId),
        Some("session") if segs.len() == 2 && key(1) == Some("id") => Ok(Ref::SessionId),
        Some("project") if segs.len() >= 2 && !dollar => Ok(Ref::Project {
            path: segs[1..].to_vec(),
        }),
        // `tasks.<name or id>` is the task graph's spelling of the same thing.
        Some("steps" | "tasks") => match (key(1), key(2)) {
            (Some(step), Some("output" | "result")) => Ok(Ref::StepOutput {
                step: step.into(),
                path: segs[3..].to_vec(),
            }),
            (Some(step), Some("status")) if segs.len() == 3 => {
                Ok(Ref::StepStatus { step: step.into() })
            }
            _ => Err(bad()),
        },
        // The original specification's `<step>.output` / `<step>.result`.
        Some(step) => match key(1) {
            Some("output" | "result") => Ok(Ref::StepOutput {
                step: step.into(),
                path: segs[2..].to_vec(),
            }),
            Some("status") if segs.len() == 2 && !dollar => {
                Ok(Ref::StepStatus { step: step.into() })
            }
            _ => Err(bad()),
        },
        None => Err(bad()),
    }
}

fn parse_path(expr: &str) -> Result<Vec<Seg>, String> {
    let bad = |why: &str| format!("bad reference '{}': {why}", crate::error::excerpt(expr));
    let mut segs = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    while i < b.len() {
        match b[i] {
            b'[' => {
                let end = expr[i..].find(']').ok_or_else(|| bad("'[' without ']'"))? + i;
                let inner = expr[i + 1..end].trim();
                if let Some(q) = inner
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                {
                    segs.push(Seg::Key(q.to_string()));
                } else {
                    segs.push(Seg::Index(
                        inner
                            .parse()
                            .map_err(|_| bad("index must be a number or a quoted key"))?,
                    ));
                }
                i = end + 1;
            }
            b'.' if !segs.is_empty() => {
                i += 1;
                if i >= b.len() || !ident(b[i]) {
                    return Err(bad("'.' must be followed by a name"));
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                segs.push(Seg::Key(expr[start..i].to_string()));
                if i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    return Err(bad("unexpected character"));
                }
            }
            _ => return Err(bad("unexpected character")),
        }
    }
    if segs.is_empty() {
        return Err(bad("empty"));
    }
    Ok(segs)
}

fn walk<'v>(mut v: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    for s in path {
        v = match s {
            Seg::Key(k) => v.get(k.as_str())?,
            Seg::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// The value a reference points at (`raw` is its source text, for messages),
/// borrowed from the scope where it can be.
pub fn lookup<'s>(
    r: &Ref,
    raw: &str,
    scope: &'s dyn Scope,
) -> Result<std::borrow::Cow<'s, Value>, String> {
    use std::borrow::Cow;
    let raw = crate::error::excerpt(raw);
    let x = |s: &str| crate::error::excerpt(s).into_owned();
    match r {
        Ref::RunId => Ok(Cow::Owned(Value::String(scope.run_id().into()))),
        Ref::SessionId => Ok(Cow::Owned(Value::String(scope.session_id().into()))),
        Ref::Project { path } => {
            let p = scope.project().ok_or_else(|| {
                format!("{raw}: this run has no project; run the workflow with execute_workflow's `project`")
            })?;
            walk(p, path)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("{raw}: the project has no such field (see get_project)"))
        }
        Ref::Param { name, path } => {
            let v = scope
                .param(name)
                .ok_or_else(|| format!("{raw}: parameter '{}' has no value", x(name)))?;
            walk(v, path)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("{raw}: path not found in parameter '{}'", x(name)))
        }
        Ref::StepStatus { step } => {
            let (status, _) = scope
                .step(step)
                .ok_or_else(|| format!("{raw}: no step '{}'", x(step)))?;
            Ok(Cow::Owned(Value::String(status)))
        }
        Ref::StepOutput { step, path } => {
            let (status, output) = scope
                .step(step)
                .ok_or_else(|| format!("{raw}: no step '{}'", x(step)))?;
            let output = output.ok_or_else(|| {
                format!("{raw}: step '{}' has no output (it is {status})", x(step))
            })?;
            walk(output, path)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("{raw}: path not found in the output of step '{}'", x(step)))
        }
    }
}

/// Every template string inside a JSON value, with its location (`a.b[0]`).
pub fn templates_in(v: &Value, at: &str, out: &mut Vec<(String, Result<Template, String>)>) {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("${") => {
            out.push((at.to_string(), Template::parse(s)))
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                templates_in(x, &format!("{at}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                templates_in(x, &p, out);
            }
        }
        _ => {}
    }
}

/// Render every template string inside a JSON value, within `budget` bytes
/// of rendered values. The value's own nesting was bounded when it was
/// accepted (`workflows.max_nesting_depth`), so the recursion is too.
pub fn render_value_within(
    v: &Value,
    scope: &dyn Scope,
    budget: &mut Budget,
) -> Result<Value, RenderError> {
    Ok(match v {
        Value::String(s) if s.contains("{{") || s.contains("${") => Template::parse(s)
            .map_err(RenderError::Invalid)?
            .render_within(scope, budget)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_value_within(x, scope, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_value_within(x, scope, budget)?)))
                .collect::<Result<_, RenderError>>()?,
        ),
        other => {
            budget.take(crate::model::bounds::json_size(other))?;
            other.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct S {
        params: serde_json::Map<String, Value>,
        steps: HashMap<String, (String, Option<Value>)>,
    }
    impl Scope for S {
        fn param(&self, n: &str) -> Option<&Value> {
            self.params.get(n)
        }
        fn step(&self, n: &str) -> Option<(String, Option<&Value>)> {
            self.steps.get(n).map(|(s, o)| (s.clone(), o.as_ref()))
        }
        fn run_id(&self) -> &str {
            "run_1"
        }
        fn session_id(&self) -> &str {
            "ses_1"
        }
    }

    fn scope() -> S {
        let mut steps = HashMap::new();
        steps.insert(
            "a".into(),
            (
                "succeeded".into(),
                Some(json!({"x": [10, {"y": "deep"}], "n": 3})),
            ),
        );
        steps.insert("b".into(), ("failed".into(), None));
        S {
            params: json!({"env": "prod", "n": 2, "obj": {"k": true}})
                .as_object()
                .unwrap()
                .clone(),
            steps,
        }
    }

    fn r(s: &str) -> Result<Value, String> {
        Template::parse(s)?.render(&scope())
    }

    #[test]
    fn whole_references_keep_their_type() {
        assert_eq!(r("{{params.n}}").unwrap(), json!(2));
        assert_eq!(r("{{ params.obj }}").unwrap(), json!({"k": true}));
        assert_eq!(
            r("{{steps.a.output}}").unwrap(),
            json!({"x": [10, {"y": "deep"}], "n": 3})
        );
        assert_eq!(r("{{steps.a.output.x[1].y}}").unwrap(), json!("deep"));
        assert_eq!(r("{{steps.a.output.x[0]}}").unwrap(), json!(10));
        assert_eq!(r("{{steps.a.output[\"n\"]}}").unwrap(), json!(3));
        assert_eq!(r("{{a.output.n}}").unwrap(), json!(3));
        assert_eq!(
            r("${a.result}").unwrap(),
            json!({"x": [10, {"y": "deep"}], "n": 3})
        );
        assert_eq!(r("{{steps.b.status}}").unwrap(), json!("failed"));
        assert_eq!(r("{{run.id}}").unwrap(), json!("run_1"));
        assert_eq!(r("{{session.id}}").unwrap(), json!("ses_1"));
    }

    #[test]
    fn references_inside_text_render_as_text() {
        assert_eq!(
            r("env={{params.env}} n={{params.n}} o={{params.obj}}").unwrap(),
            json!("env=prod n=2 o={\"k\":true}")
        );
        assert_eq!(
            r("literal \\{{params.env}}").unwrap(),
            json!("literal {{params.env}}")
        );
        assert_eq!(r("no refs").unwrap(), json!("no refs"));
    }

    #[test]
    fn unresolvable_references_are_errors() {
        assert!(r("{{params.missing}}").unwrap_err().contains("missing"));
        assert!(r("{{steps.b.output}}").unwrap_err().contains("no output"));
        assert!(
            r("{{steps.a.output.nope}}")
                .unwrap_err()
                .contains("path not found")
        );
        assert!(r("{{steps.zz.output}}").unwrap_err().contains("no step"));
    }

    #[test]
    fn malformed_templates_are_parse_errors() {
        for bad in [
            "{{params.x",
            "{{}}",
            "{{params}}",
            "{{steps.a}}",
            "{{run.x}}",
            "{{a b}}",
            "{{steps.a.output[x]}}",
            "${a.status}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn rendering_stays_within_its_budget() {
        // A string that references a value twice, doubling it, is refused
        // once the budget is spent, before the text is built.
        let v = json!({"a": "{{steps.a.output}} {{steps.a.output}}"});
        let size = render_value_within(&v, &scope(), &mut Budget::new(1 << 20, "k"))
            .unwrap()
            .to_string()
            .len();
        let e = render_value_within(
            &v,
            &scope(),
            &mut Budget::new(size / 2, "workflows.max_rendered_bytes"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, RenderError::TooLarge(m) if m.contains("workflows.max_rendered_bytes")),
            "{e:?}"
        );
        let e = render_value_within(
            &json!("{{params.nope}}"),
            &scope(),
            &mut Budget::new(100, "k"),
        )
        .unwrap_err();
        assert!(matches!(e, RenderError::Invalid(_)));
    }

    #[test]
    fn values_render_recursively() {
        let v = json!({"a": ["{{params.n}}", {"b": "x{{params.env}}"}], "c": 1});
        assert_eq!(
            render_value_within(&v, &scope(), &mut Budget::new(1000, "k")).unwrap(),
            json!({"a": [2, {"b": "xprod"}], "c": 1})
        );
        let mut found = Vec::new();
        templates_in(&v, "", &mut found);
        assert_eq!(
            found.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["a[0]", "a[1].b"]
        );
    }
}

//! `when` conditions: a small expression language over references.
//!
//! `{{params.env}} == 'prod' && !{{steps.check.output.skip}}`, or with bare
//! paths: `params.count > 3 || steps.a.status == "failed"`. Operators:
//! `|| && ! == != < <= > >=` and parentheses; literals: strings ('..' or ".."),
//! numbers, `true`, `false`, `null`. A lone value is tested for truthiness
//! (null, false, 0, "", [] and {} are false).
//!
//! Input is bounded before it is used: a condition longer than
//! `workflows.max_condition_bytes` is refused before it is read, `&&`/`||`
//! chains are n-ary (a chain of any length is one level), and parentheses
//! and `!` may nest at most `max_depth` levels (`workflows.max_nesting_depth`),
//! so neither parsing, evaluating nor dropping an expression can exhaust the stack.

use serde_json::Value;

use super::template::{Ref, Scope, lookup, parse_ref};
use crate::error::excerpt;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Ref(Ref, String),
    Not(Box<Expr>),
    /// Every operand is true (evaluated left to right, stopping at the first false).
    And(Vec<Expr>),
    /// Some operand is true (evaluated left to right, stopping at the first true).
    Or(Vec<Expr>),
    Cmp(Box<Expr>, Op, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Val(Value),
    Ref(Ref, String),
    Op(Op),
    And,
    Or,
    Not,
    Open,
    Close,
}

/// How large and how deeply nested a condition may be.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest condition in bytes (`workflows.max_condition_bytes`).
    pub max_bytes: usize,
    /// Deepest nesting of parentheses and `!` (`workflows.max_nesting_depth`).
    pub max_depth: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024,
            max_depth: 32,
        }
    }
}

pub fn parse(src: &str, bounds: Bounds) -> Result<Expr, String> {
    if src.len() > bounds.max_bytes {
        return Err(format!(
            "the condition is {} bytes; the limit is {} (workflows.max_condition_bytes)",
            src.len(),
            bounds.max_bytes
        ));
    }
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
        max_depth: bounds.max_depth,
    };
    let e = p.or()?;
    if p.i != p.toks.len() {
        return Err(format!(
            "unexpected '{}' in condition \"{}\"",
            describe(&p.toks[p.i]),
            excerpt(src)
        ));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Val(v) => excerpt(&v.to_string()).into_owned(),
        Tok::Ref(_, raw) => excerpt(raw).into_owned(),
        Tok::Op(o) => format!("{o:?}"),
        Tok::And => "&&".into(),
        Tok::Or => "||".into(),
        Tok::Not => "!".into(),
        Tok::Open => "(".into(),
        Tok::Close => ")".into(),
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let s = src;
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        let c = b[i];
        let two = s.get(i..i + 2).unwrap_or("");
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            _ if two == "{{" => {
                let end = s[i + 2..]
                    .find("}}")
                    .ok_or_else(|| format!("'{{{{' without '}}}}' in \"{}\"", excerpt(src)))?
                    + i
                    + 2;
                let raw = &s[i..end + 2];
                out.push(Tok::Ref(
                    parse_ref(s[i + 2..end].trim(), false)?,
                    raw.to_string(),
                ));
                i = end + 2;
            }
            _ if two == "&&" => {
                out.push(Tok::And);
                i += 2;
            }
            _ if two == "||" => {
                out.push(Tok::Or);
                i += 2;
            }
            _ if two == "==" || two == "!=" || two == "<=" || two == ">=" => {
                out.push(Tok::Op(match two {
                    "==" => Op::Eq,
                    "!=" => Op::Ne,
                    "<=" => Op::Le,
                    _ => Op::Ge,
                }));
                i += 2;
            }
            b'<' | b'>' => {
                out.push(Tok::Op(if c == b'<' { Op::Lt } else { Op::Gt }));
                i += 1;
            }
            b'!' => {
                out.push(Tok::Not);
                i += 1;
            }
            b'\'' | b'"' => {
                let end = s[i + 1..]
                    .find(c as char)
                    .ok_or_else(|| format!("unterminated string in \"{}\"", excerpt(src)))?
                    + i
                    + 1;
                out.push(Tok::Val(Value::String(s[i + 1..end].to_string())));
                i = end + 1;
            }
            _ if c.is_ascii_digit()
                || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e' || b[i] == b'E')
                {
                    i += 1;
                }
                let n: Value = serde_json::from_str(&s[start..i])
                    .map_err(|_| format!("bad number '{}'", excerpt(&s[start..i])))?;
                out.push(Tok::Val(n));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                if two == "${" {
                    let end = s[i..]
                        .find('}')
                        .ok_or_else(|| format!("'${{' without '}}' in \"{}\"", excerpt(src)))?
                        + i;
                    let raw = &s[i..=end];
                    out.push(Tok::Ref(
                        parse_ref(s[i + 2..end].trim(), true)?,
                        raw.to_string(),
                    ));
                    i = end + 1;
                    continue;
                }
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_-.[]\"'".contains(&b[i])) {
                    i += 1;
                }
                let word = &s[start..i];
                out.push(match word {
                    "true" => Tok::Val(Value::Bool(true)),
                    "false" => Tok::Val(Value::Bool(false)),
                    "null" => Tok::Val(Value::Null),
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    _ => Tok::Ref(parse_ref(word, false)?, word.to_string()),
                });
            }
            _ => {
                let c = s[i..].chars().next().unwrap_or('?');
                return Err(format!(
                    "unexpected '{c}' in condition \"{}\"",
                    excerpt(src)
                ));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    i: usize,
    /// Parentheses and `!` open around the current position.
    depth: usize,
    max_depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let first = self.and()?;
        if self.peek() != Some(&Tok::Or) {
            return Ok(first);
        }
        let mut all = vec![first];
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            all.push(self.and()?);
        }
        Ok(Expr::Or(all))
    }

    fn and(&mut self) -> Result<Expr, String> {
        let first = self.cmp()?;
        if self.peek() != Some(&Tok::And) {
            return Ok(first);
        }
        let mut all = vec![first];
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            all.push(self.cmp()?);
        }
        Ok(Expr::And(all))
    }

    /// One more level of `(` or `!`, refused past the limit.
    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(format!(
                "the condition nests parentheses and '!' deeper than {} levels (workflows.max_nesting_depth)",
                self.max_depth
            ));
        }
        Ok(())
    }

    fn cmp(&mut self) -> Result<Expr, String> {
        let l = self.unary()?;
        if let Some(Tok::Op(op)) = self.peek().cloned() {
            self.i += 1;
            return Ok(Expr::Cmp(Box::new(l), op, Box::new(self.unary()?)));
        }
        Ok(l)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        match self.toks.get(self.i).cloned() {
            Some(Tok::Not) => {
                self.i += 1;
                self.deeper()?;
                let e = Expr::Not(Box::new(self.unary()?));
                self.depth -= 1;
                Ok(e)
            }
            Some(Tok::Open) => {
                self.i += 1;
                self.deeper()?;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("missing ')' in condition".into());
                }
                self.i += 1;
                self.depth -= 1;
                Ok(e)
            }
            Some(Tok::Val(v)) => {
                self.i += 1;
                Ok(Expr::Lit(v))
            }
            Some(Tok::Ref(r, raw)) => {
                self.i += 1;
                Ok(Expr::Ref(r, raw))
            }
            Some(t) => Err(format!("unexpected '{}' in condition", describe(&t))),
            None => Err("condition ends too early".into()),
        }
    }
}

impl Expr {
    /// Every reference in the expression.
    pub fn refs(&self, out: &mut Vec<Ref>) {
        match self {
            Expr::Lit(_) => {}
            Expr::Ref(r, _) => out.push(r.clone()),
            Expr::Not(e) => e.refs(out),
            Expr::And(all) | Expr::Or(all) => all.iter().for_each(|e| e.refs(out)),
            Expr::Cmp(a, _, b) => {
                a.refs(out);
                b.refs(out);
            }
        }
    }

    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, String> {
        Ok(match self {
            Expr::Lit(v) => v.clone(),
            Expr::Ref(r, raw) => lookup(r, raw, scope)?.into_owned(),
            Expr::Not(e) => Value::Bool(!truthy(&e.eval(scope)?)),
            Expr::And(all) => {
                for e in all {
                    if !truthy(&e.eval(scope)?) {
                        return Ok(Value::Bool(false));
                    }
                }
                Value::Bool(true)
            }
            Expr::Or(all) => {
                for e in all {
                    if truthy(&e.eval(scope)?) {
                        return Ok(Value::Bool(true));
                    }
                }
                Value::Bool(false)
            }
            Expr::Cmp(a, op, b) => Value::Bool(compare(&a.eval(scope)?, *op, &b.eval(scope)?)?),
        })
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn compare(a: &Value, op: Op, b: &Value) -> Result<bool, String> {
    let eq = match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    let ord = match (a, b) {
        (Value::Number(_), Value::Number(_)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    let need =
        || format!("cannot order {a} and {b}: '<' and '>' compare two numbers or two strings");
    Ok(match op {
        Op::Eq => eq,
        Op::Ne => !eq,
        Op::Lt => ord.ok_or_else(need)?.is_lt(),
        Op::Le => ord.ok_or_else(need)?.is_le(),
        Op::Gt => ord.ok_or_else(need)?.is_gt(),
        Op::Ge => ord.ok_or_else(need)?.is_ge(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct S(Value);
    impl Scope for S {
        fn param(&self, n: &str) -> Option<&Value> {
            self.0.get(n)
        }
        fn step(&self, n: &str) -> Option<(String, Option<&Value>)> {
            (n == "a").then(|| ("succeeded".to_string(), self.0.get("a_out")))
        }
        fn run_id(&self) -> &str {
            "r"
        }
        fn session_id(&self) -> &str {
            "s"
        }
    }

    fn ev(src: &str) -> Result<bool, String> {
        let s = S(
            json!({"env": "prod", "n": 5, "flag": false, "list": [], "a_out": {"ok": true, "v": 2}}),
        );
        Ok(truthy(&parse(src, Bounds::default())?.eval(&s)?))
    }

    #[test]
    fn conditions_evaluate() {
        assert!(ev("{{params.env}} == 'prod'").unwrap());
        assert!(ev("params.env != \"dev\"").unwrap());
        assert!(ev("params.n > 3 && params.n <= 5").unwrap());
        assert!(!ev("params.n < 5").unwrap());
        assert!(ev("!params.flag").unwrap());
        assert!(!ev("params.list").unwrap());
        assert!(ev("steps.a.output.ok").unwrap());
        assert!(ev("{{steps.a.output.v}} == 2 || false").unwrap());
        assert!(ev("${a.result}").unwrap());
        assert!(ev("steps.a.status == 'succeeded'").unwrap());
        assert!(ev("(params.flag || params.n == 5) and not params.flag").unwrap());
        assert!(ev("params.n >= -1").unwrap());
    }

    #[test]
    fn bad_conditions_are_errors() {
        for bad in [
            "params.n >",
            "(params.n",
            "params.n == 'x",
            "params",
            "1 2",
            "params.n < 'a'",
        ] {
            assert!(ev(bad).is_err(), "{bad}");
        }
        assert!(ev("params.missing").is_err());
    }

    #[test]
    fn bombs_are_refused_or_flat() {
        let b = Bounds::default();
        let deep = format!("{}true{}", "(".repeat(2000), ")".repeat(2000));
        let e = parse(
            &deep,
            Bounds {
                max_bytes: 1 << 20,
                ..b
            },
        )
        .unwrap_err();
        assert!(e.contains("workflows.max_nesting_depth"), "{e}");
        let nots = format!("{}true", "!".repeat(10_000));
        let e = parse(
            &nots,
            Bounds {
                max_bytes: 1 << 20,
                ..b
            },
        )
        .unwrap_err();
        assert!(e.contains("workflows.max_nesting_depth"), "{e}");
        // A long chain is one level: it parses and evaluates without recursion.
        let chain = "true && ".repeat(100_000) + "true";
        let e = parse(&chain, b).unwrap_err();
        assert!(e.contains("workflows.max_condition_bytes"), "{e}");
        let big = Bounds {
            max_bytes: 1 << 20,
            ..b
        };
        let x = parse(&chain, big).unwrap();
        assert!(matches!(&x, Expr::And(all) if all.len() == 100_001));
        assert!(truthy(&x.eval(&S(json!({}))).unwrap()));
        // Exactly at the limit parses; one more level does not.
        let at = format!("{}true{}", "(".repeat(32), ")".repeat(32));
        assert!(parse(&at, b).is_ok());
        let over = format!("{}true{}", "(".repeat(33), ")".repeat(33));
        assert!(parse(&over, b).is_err());
        // Errors quote a prefix of the condition, not all of it.
        let long = format!("{} ?", "x".repeat(5000));
        assert!(parse(&long, big).unwrap_err().len() < 400);
    }
}

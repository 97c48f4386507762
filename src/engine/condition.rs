//! `when` conditions: a small expression language over references.
//!
//! `{{params.env}} == 'prod' && !{{steps.check.output.skip}}`, or with bare
//! paths: `params.count > 3 || steps.a.status == "failed"`. Operators:
//! `|| && ! == != < <= > >=` and parentheses; literals: strings ('..' or ".."),
//! numbers, `true`, `false`, `null`. A lone value is tested for truthiness
//! (null, false, 0, "", [] and {} are false).

use serde_json::Value;

use super::template::{Ref, Scope, lookup, parse_ref};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Ref(Ref, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
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

pub fn parse(src: &str) -> Result<Expr, String> {
    let toks = lex(src)?;
    let mut p = Parser { toks, i: 0 };
    let e = p.or()?;
    if p.i != p.toks.len() {
        return Err(format!(
            "unexpected '{}' in condition \"{src}\"",
            describe(&p.toks[p.i])
        ));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Val(v) => v.to_string(),
        Tok::Ref(_, raw) => raw.clone(),
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
                    .ok_or_else(|| format!("'{{{{' without '}}}}' in \"{src}\""))?
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
                    .ok_or_else(|| format!("unterminated string in \"{src}\""))?
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
                    .map_err(|_| format!("bad number '{}'", &s[start..i]))?;
                out.push(Tok::Val(n));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                if two == "${" {
                    let end = s[i..]
                        .find('}')
                        .ok_or_else(|| format!("'${{' without '}}' in \"{src}\""))?
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
            _ => return Err(format!("unexpected '{}' in condition \"{src}\"", c as char)),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.cmp()?;
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            l = Expr::And(Box::new(l), Box::new(self.cmp()?));
        }
        Ok(l)
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
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.i += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("missing ')' in condition".into());
                }
                self.i += 1;
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
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(a, _, b) => {
                a.refs(out);
                b.refs(out);
            }
        }
    }

    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, String> {
        Ok(match self {
            Expr::Lit(v) => v.clone(),
            Expr::Ref(r, raw) => lookup(r, raw, scope)?,
            Expr::Not(e) => Value::Bool(!truthy(&e.eval(scope)?)),
            Expr::And(a, b) => Value::Bool(truthy(&a.eval(scope)?) && truthy(&b.eval(scope)?)),
            Expr::Or(a, b) => Value::Bool(truthy(&a.eval(scope)?) || truthy(&b.eval(scope)?)),
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
        Ok(truthy(&parse(src)?.eval(&s)?))
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
}

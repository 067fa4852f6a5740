//! MONAI bundle config references, evaluated without Python.
//!
//! A bundle config is JSON in which strings can be references: `@id` (the evaluated
//! value of another entry; ids nest with `#`, as in `@preprocessing#transforms#0`),
//! `%id` or `%configs/file.json#id` (a copy of an entry's raw JSON, here or in another
//! config of the bundle), and `$expression` (Python). Bundles use expressions mostly
//! for arithmetic on references and small literals (`$@bundle_root + '/models'`,
//! `$[1.5, 1.5, 1.5] if @highres else [3.0, 3.0, 3.0]`), so this module evaluates that
//! subset of Python: numbers, strings, `True`/`False`/`None`, lists and tuples, `@`
//! references, unary `-`, `+ - * /`, comparisons, `and`/`or`/`not` and the conditional
//! `a if c else b`. Anything else (a name such as `torch`, a call, an attribute) is an
//! error naming the expression and where it was met. Only the entries the importer asks
//! for are evaluated, so the bundle's training or I/O code elsewhere never matters.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Number, Value};

use crate::error::{Result, RunnerError};

/// How deep references may chain and expressions nest.
const MAX_DEPTH: usize = 64;

/// A parsed bundle config plus the other configs `%file#id` macros may name.
pub struct Resolver<'a> {
    root: &'a Value,
    /// Name of the config (`configs/inference.json`) for messages.
    name: String,
    /// The bundle folder, for `%configs/<file>.json#id` macros.
    bundle: Option<&'a Path>,
    cache: HashMap<String, Value>,
    stack: Vec<String>,
}

fn err(msg: impl std::fmt::Display) -> RunnerError {
    RunnerError::invalid(msg.to_string())
}

impl<'a> Resolver<'a> {
    pub fn new(root: &'a Value, name: &str, bundle: Option<&'a Path>) -> Self {
        Self {
            root,
            name: name.to_owned(),
            bundle,
            cache: HashMap::new(),
            stack: Vec::new(),
        }
    }

    /// The raw (unevaluated) JSON at `id`, if present.
    pub fn raw(&self, id: &str) -> Option<&'a Value> {
        lookup(self.root, id)
    }

    /// The evaluated value of entry `id`.
    pub fn get(&mut self, id: &str) -> Result<Value> {
        if let Some(v) = self.cache.get(id) {
            return Ok(v.clone());
        }
        if self.stack.iter().any(|s| s == id) || self.stack.len() >= MAX_DEPTH {
            return Err(err(format!(
                "{}: reference cycle or chain too deep at @{id}",
                self.name
            )));
        }
        let raw = self
            .raw(id)
            .ok_or_else(|| err(format!("{}: @{id} refers to nothing", self.name)))?;
        self.stack.push(id.to_owned());
        let v = self.eval(raw, id);
        self.stack.pop();
        let v = v?;
        self.cache.insert(id.to_owned(), v.clone());
        Ok(v)
    }

    /// Evaluates a JSON value met at `at`: strings that are references or expressions
    /// are resolved, containers element by element. Keys starting with `_` (`_target_`,
    /// `_disabled_`, `_desc_`, …) stay as written.
    pub fn eval(&mut self, v: &Value, at: &str) -> Result<Value> {
        match v {
            Value::String(s) => self.eval_str(s, at),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| self.eval(x, &format!("{at}#{i}")))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array),
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, x) in map {
                    let x = if k.starts_with('_') {
                        x.clone()
                    } else {
                        self.eval(x, &format!("{at}#{k}"))?
                    };
                    out.insert(k.clone(), x);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn eval_str(&mut self, s: &str, at: &str) -> Result<Value> {
        if let Some(id) = s.strip_prefix('@') {
            return self.get(id);
        }
        if let Some(m) = s.strip_prefix('%') {
            let raw = self.macro_value(m, at)?;
            return self.eval(&raw, at);
        }
        if let Some(expr) = s.strip_prefix('$') {
            let mut p = Parser {
                toks: tokenize(expr).map_err(|e| self.expr_error(s, at, &e))?,
                pos: 0,
                depth: 0,
            };
            let ast = p.expr().map_err(|e| self.expr_error(s, at, &e))?;
            if p.pos != p.toks.len() {
                return Err(self.expr_error(s, at, "unexpected text after the expression"));
            }
            return self.eval_ast(&ast).map_err(|e| match e {
                RunnerError::Invalid(m) if !m.contains(&self.name) => self.expr_error(s, at, &m),
                other => other,
            });
        }
        Ok(Value::String(s.to_owned()))
    }

    fn expr_error(&self, expr: &str, at: &str, why: &str) -> RunnerError {
        err(format!(
            "{}: cannot evaluate `{expr}` at {at} ({why}); only literals, @references, \
             arithmetic and conditionals are supported",
            self.name
        ))
    }

    /// `%id` (this config) or `%configs/file.json#id` (another config of the bundle).
    fn macro_value(&self, m: &str, at: &str) -> Result<Value> {
        let (file, id) = m.split_once('#').unwrap_or(("", m));
        if file.is_empty() {
            return self
                .raw(id)
                .cloned()
                .ok_or_else(|| err(format!("{}: %{m} at {at} refers to nothing", self.name)));
        }
        let bundle = self
            .bundle
            .ok_or_else(|| err(format!("{}: %{m} at {at} names another file", self.name)))?;
        let rel = Path::new(file);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || rel.extension().is_none_or(|e| e != "json")
        {
            return Err(err(format!(
                "{}: %{m} at {at} must name a .json file inside the bundle",
                self.name
            )));
        }
        let doc = super::read_json(&bundle.join(rel))?;
        lookup(&doc, id)
            .cloned()
            .ok_or_else(|| err(format!("{}: %{m} at {at} refers to nothing", self.name)))
    }

    fn eval_ast(&mut self, e: &Expr) -> Result<Value> {
        Ok(match e {
            Expr::Lit(v) => v.clone(),
            Expr::Ref(id) => self.get(id)?,
            Expr::List(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.eval_ast(i))
                    .collect::<Result<_>>()?,
            ),
            Expr::Neg(x) => match self.eval_ast(x)? {
                Value::Number(n) => num(-n.as_f64().unwrap_or(0.0), n.is_i64() || n.is_u64()),
                _ => return Err(err("unary minus of a non-number")),
            },
            Expr::Not(x) => Value::Bool(!truthy(&self.eval_ast(x)?)),
            Expr::And(a, b) => {
                let l = self.eval_ast(a)?;
                if truthy(&l) { self.eval_ast(b)? } else { l }
            }
            Expr::Or(a, b) => {
                let l = self.eval_ast(a)?;
                if truthy(&l) { l } else { self.eval_ast(b)? }
            }
            Expr::If(then, cond, other) => {
                if truthy(&self.eval_ast(cond)?) {
                    self.eval_ast(then)?
                } else {
                    self.eval_ast(other)?
                }
            }
            Expr::Bin(op, a, b) => {
                let (l, r) = (self.eval_ast(a)?, self.eval_ast(b)?);
                binary(*op, l, r)?
            }
        })
    }
}

/// The entry at a `#`-separated id (object keys, list indices).
pub fn lookup<'v>(root: &'v Value, id: &str) -> Option<&'v Value> {
    if id.is_empty() {
        return Some(root);
    }
    id.split('#').try_fold(root, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn num(x: f64, int: bool) -> Value {
    if int && x.fract() == 0.0 && x.abs() < 9e15 {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn binary(op: Op, l: Value, r: Value) -> Result<Value> {
    use Value::{Array, Number as N, String as S};
    Ok(match (op, l, r) {
        (Op::Eq, a, b) => Value::Bool(a == b),
        (Op::Ne, a, b) => Value::Bool(a != b),
        (Op::Add, S(a), S(b)) => S(a + &b),
        (Op::Add, Array(mut a), Array(b)) => {
            a.extend(b);
            Array(a)
        }
        (op, N(a), N(b)) => {
            let int = (a.is_i64() || a.is_u64()) && (b.is_i64() || b.is_u64());
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            match op {
                Op::Add => num(x + y, int),
                Op::Sub => num(x - y, int),
                Op::Mul => num(x * y, int),
                Op::Div if y == 0.0 => return Err(err("division by zero")),
                Op::Div => num(x / y, false),
                Op::Lt => Value::Bool(x < y),
                Op::Le => Value::Bool(x <= y),
                Op::Gt => Value::Bool(x > y),
                Op::Ge => Value::Bool(x >= y),
                Op::Eq | Op::Ne => unreachable!("handled above"),
            }
        }
        (op, a, b) => return Err(err(format!("{op:?} of {a} and {b}"))),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64, bool),
    Str(String),
    Ref(String),
    Name(String),
    Sym(&'static str),
}

fn tokenize(s: &str) -> std::result::Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || b[i] == b'_'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let text = s[start..i].replace('_', "");
            let int = !text.contains(['.', 'e', 'E']);
            let v: f64 = text.parse().map_err(|_| format!("bad number {text}"))?;
            out.push(Tok::Num(v, int));
        } else if c == '\'' || c == '"' {
            let end = s[i + 1..]
                .find(c)
                .ok_or_else(|| "unterminated string".to_owned())?;
            let text = &s[i + 1..i + 1 + end];
            if text.contains('\\') {
                return Err("escapes in strings".into());
            }
            out.push(Tok::Str(text.to_owned()));
            i += end + 2;
        } else if c == '@' {
            let start = i + 1;
            i = start;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'#') {
                i += 1;
            }
            out.push(Tok::Ref(s[start..i].to_owned()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[start..i].to_owned()));
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let sym = ["==", "!=", "<=", ">="]
                .into_iter()
                .find(|&t| t == two)
                .or_else(|| {
                    ["+", "-", "*", "/", "(", ")", "[", "]", ",", "<", ">"]
                        .into_iter()
                        .find(|t| t.starts_with(c))
                })
                .ok_or_else(|| format!("unexpected `{c}`"))?;
            out.push(Tok::Sym(sym));
            i += sym.len();
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Expr {
    Lit(Value),
    Ref(String),
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(t)) if *t == s)
    }

    fn is_name(&self, n: &str) -> bool {
        matches!(self.peek(), Some(Tok::Name(t)) if t == n)
    }

    fn expect(&mut self, s: &str) -> PResult<()> {
        if self.is_sym(s) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected `{s}`"))
        }
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        let e = self.or()?;
        let e = if self.is_name("if") {
            self.pos += 1;
            let cond = self.or()?;
            if !self.is_name("else") {
                return Err("`if` without `else`".into());
            }
            self.pos += 1;
            Expr::If(Box::new(e), Box::new(cond), Box::new(self.expr()?))
        } else {
            e
        };
        self.depth -= 1;
        Ok(e)
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut l = self.and()?;
        while self.is_name("or") {
            self.pos += 1;
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut l = self.not()?;
        while self.is_name("and") {
            self.pos += 1;
            l = Expr::And(Box::new(l), Box::new(self.not()?));
        }
        Ok(l)
    }

    fn not(&mut self) -> PResult<Expr> {
        if self.is_name("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        let l = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Sym("==")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Ok(l),
        };
        self.pos += 1;
        Ok(Expr::Bin(op, Box::new(l), Box::new(self.sum()?)))
    }

    fn sum(&mut self) -> PResult<Expr> {
        let mut l = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("+")) => Op::Add,
                Some(Tok::Sym("-")) => Op::Sub,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Bin(op, Box::new(l), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> PResult<Expr> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("*")) => Op::Mul,
                Some(Tok::Sym("/")) => Op::Div,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Bin(op, Box::new(l), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> PResult<Expr> {
        if self.is_sym("-") {
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err("nested too deeply".into());
            }
            let e = Expr::Neg(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        self.atom()
    }

    fn atom(&mut self) -> PResult<Expr> {
        let tok = self.peek().cloned().ok_or("unexpected end")?;
        self.pos += 1;
        let e = match tok {
            Tok::Num(v, int) => Expr::Lit(num(v, int)),
            Tok::Str(s) => Expr::Lit(Value::String(s)),
            Tok::Ref(id) => Expr::Ref(id),
            Tok::Name(n) => match n.as_str() {
                "True" => Expr::Lit(Value::Bool(true)),
                "False" => Expr::Lit(Value::Bool(false)),
                "None" => Expr::Lit(Value::Null),
                _ => return Err(format!("`{n}` is a Python name")),
            },
            Tok::Sym(open @ ("(" | "[")) => {
                let close = if open == "(" { ")" } else { "]" };
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.is_sym(close) {
                    items.push(self.expr()?);
                    trailing_comma = self.is_sym(",");
                    if trailing_comma {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                self.expect(close)?;
                if open == "(" && items.len() == 1 && !trailing_comma {
                    items.pop().expect("one item")
                } else {
                    Expr::List(items)
                }
            }
            Tok::Sym(s) => return Err(format!("unexpected `{s}`")),
        };
        // A call, subscript or attribute would follow here: Python code, not data.
        if self.is_sym("(") || self.is_sym("[") {
            return Err("calls and subscripts are Python code".into());
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(doc: Value, id: &str) -> Result<Value> {
        Resolver::new(&doc, "configs/inference.json", None).get(id)
    }

    #[test]
    fn references_macros_and_expressions_resolve() {
        let doc = json!({
            "highres": true,
            "c": 16,
            "pixdim": "$[1.5, 1.5, 1.5] if @highres else [3.0, 3.0, 3.0]",
            "roi": "$[@c * 6, @c * 6, (@c + 16) * 2]",
            "net": {"_target_": "UNet", "channels": "$[@c, @c * 2]", "strides": "%strides"},
            "strides": [2],
            "name": "$'model' + '.pt'",
            "neg": "$-@c / 4",
            "nested": "@net#channels",
            "t": "$(1, 2)",
            "flag": "$not @highres or @c >= 16"
        });
        assert_eq!(eval(doc.clone(), "pixdim").unwrap(), json!([1.5, 1.5, 1.5]));
        assert_eq!(eval(doc.clone(), "roi").unwrap(), json!([96, 96, 64]));
        assert_eq!(
            eval(doc.clone(), "net").unwrap(),
            json!({"_target_": "UNet", "channels": [16, 32], "strides": [2]})
        );
        assert_eq!(eval(doc.clone(), "name").unwrap(), json!("model.pt"));
        assert_eq!(eval(doc.clone(), "neg").unwrap(), json!(-4.0));
        assert_eq!(eval(doc.clone(), "nested").unwrap(), json!([16, 32]));
        assert_eq!(eval(doc.clone(), "t").unwrap(), json!([1, 2]));
        assert_eq!(eval(doc, "flag").unwrap(), json!(true));
    }

    #[test]
    fn python_code_and_cycles_are_refused_with_context() {
        let doc = json!({
            "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
            "call": "$len([1, 2])",
            "a": "@b", "b": "@a",
            "missing": "@nothing"
        });
        let e = eval(doc.clone(), "device").unwrap_err().to_string();
        assert!(
            e.contains("$torch.device") && e.contains("at device"),
            "{e}"
        );
        let e = eval(doc.clone(), "call").unwrap_err().to_string();
        assert!(e.contains("len"), "{e}");
        assert!(
            eval(doc.clone(), "a")
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
        assert!(
            eval(doc, "missing")
                .unwrap_err()
                .to_string()
                .contains("@nothing")
        );
        // Deeply nested expressions fail cleanly rather than overflow the stack.
        let deep = format!("${}1{}", "(".repeat(500), ")".repeat(500));
        let e = eval(json!({ "x": deep }), "x").unwrap_err().to_string();
        assert!(e.contains("nested too deeply"), "{e}");
    }
}

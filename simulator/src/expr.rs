//! Expressions: condition/filter/key-condition, update and projection expressions, with
//! `ExpressionAttributeNames` / `ExpressionAttributeValues` substitution.
//!
//! Supported: document paths (`a`, `#n`, `a.b`, `a[0]`); comparisons `= <> < <= > >=`,
//! `BETWEEN`, `IN`, `AND`, `OR`, `NOT`, parentheses; functions `attribute_exists`,
//! `attribute_not_exists`, `attribute_type`, `begins_with`, `contains`, `size`; update clauses
//! `SET` (with `+`, `-`, `if_not_exists`, `list_append`), `REMOVE`, `ADD`, `DELETE`.
//! Not checked: DynamoDB's reserved-word list (a bare `status` is accepted here).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::Value as Json;

use crate::error::ApiError;
use crate::number::Number;
use crate::value::{Item, Value};

/// DynamoDB caps each expression at 4 KB.
const MAX_EXPRESSION_BYTES: usize = 4096;

/// Which request parameter an expression came from (it prefixes error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprKind {
    Condition,
    Filter,
    KeyCondition,
    Update,
    Projection,
}

impl ExprKind {
    fn label(self) -> &'static str {
        match self {
            ExprKind::Condition => "ConditionExpression",
            ExprKind::Filter => "FilterExpression",
            ExprKind::KeyCondition => "KeyConditionExpression",
            ExprKind::Update => "UpdateExpression",
            ExprKind::Projection => "ProjectionExpression",
        }
    }
}

/// A request's substitution maps, and which entries its expressions used: DynamoDB rejects
/// undefined placeholders and unused entries alike.
#[derive(Debug, Default)]
pub struct ExprContext {
    names: HashMap<String, String>,
    values: HashMap<String, Value>,
    used_names: HashSet<String>,
    used_values: HashSet<String>,
    parsed_any: bool,
}

impl ExprContext {
    /// Reads `ExpressionAttributeNames` / `ExpressionAttributeValues` (either may be absent).
    pub fn new(names: Option<&Json>, values: Option<&Json>) -> Result<ExprContext, ApiError> {
        let mut ctx = ExprContext::default();
        if let Some(names) = names {
            ctx.names = substitutions(names, "ExpressionAttributeNames", '#', |k, v| {
                let Some(v) = v.as_str() else {
                    return Err(ApiError::serialization(
                        "ExpressionAttributeNames values must be strings",
                    ));
                };
                if v.is_empty() {
                    return Err(ApiError::validation(format!(
                        "ExpressionAttributeNames contains invalid value: Empty attribute name for key {k}"
                    )));
                }
                Ok(v.to_owned())
            })?;
        }
        if let Some(values) = values {
            ctx.values = substitutions(values, "ExpressionAttributeValues", ':', |k, v| {
                Value::from_json(v).map_err(|e| {
                    if e.code == "ValidationException" {
                        ApiError::validation(format!(
                            "ExpressionAttributeValues contains invalid value: {} for key {k}",
                            e.message
                        ))
                    } else {
                        e
                    }
                })
            })?;
        }
        Ok(ctx)
    }

    /// Fails on entries no expression used (call after parsing every expression).
    pub fn finish(&self) -> Result<(), ApiError> {
        if !self.parsed_any {
            if !self.names.is_empty() {
                return Err(ApiError::validation(
                    "ExpressionAttributeNames can only be specified when using expressions",
                ));
            }
            if !self.values.is_empty() {
                return Err(ApiError::validation(
                    "ExpressionAttributeValues can only be specified when using expressions",
                ));
            }
        }
        fn unused<'a>(
            all: impl Iterator<Item = &'a String>,
            used: &HashSet<String>,
        ) -> Vec<&'a str> {
            let mut v: Vec<&str> = all
                .filter(|k| !used.contains(*k))
                .map(String::as_str)
                .collect();
            v.sort_unstable();
            v
        }
        let names = unused(self.names.keys(), &self.used_names);
        if !names.is_empty() {
            return Err(ApiError::validation(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                names.join(", ")
            )));
        }
        let values = unused(self.values.keys(), &self.used_values);
        if !values.is_empty() {
            return Err(ApiError::validation(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                values.join(", ")
            )));
        }
        Ok(())
    }

    /// Parses a condition (ConditionExpression, FilterExpression, KeyConditionExpression).
    pub fn condition(&mut self, text: &str, kind: ExprKind) -> Result<Cond, ApiError> {
        let mut p = Parser::new(self, text, kind)?;
        let cond = p.cond_or()?;
        p.end()?;
        Ok(cond)
    }

    pub fn update(&mut self, text: &str) -> Result<Update, ApiError> {
        let mut p = Parser::new(self, text, ExprKind::Update)?;
        let update = p.update()?;
        p.end()?;
        update.check_overlaps()?;
        Ok(update)
    }

    pub fn projection(&mut self, text: &str) -> Result<Vec<Path>, ApiError> {
        let mut p = Parser::new(self, text, ExprKind::Projection)?;
        let mut paths = vec![p.path()?];
        while p.eat(&Tok::Comma) {
            paths.push(p.path()?);
        }
        p.end()?;
        Ok(paths)
    }
}

/// Reads one substitution map (`member` is its request parameter): a non-empty JSON object
/// whose keys are `sigil` placeholders (`#name`, `:value`), each value read by `read`.
fn substitutions<T>(
    json: &Json,
    member: &str,
    sigil: char,
    mut read: impl FnMut(&str, &Json) -> Result<T, ApiError>,
) -> Result<HashMap<String, T>, ApiError> {
    let Json::Object(map) = json else {
        return Err(ApiError::serialization(format!(
            "{member} must be a JSON object"
        )));
    };
    if map.is_empty() {
        return Err(ApiError::validation(format!("{member} must not be empty")));
    }
    let mut out = HashMap::with_capacity(map.len());
    for (k, v) in map {
        if !is_placeholder(k, sigil) {
            return Err(ApiError::validation(format!(
                "{member} contains invalid key: Syntax error; key: \"{k}\""
            )));
        }
        out.insert(k.clone(), read(k, v)?);
    }
    Ok(out)
}

/// A placeholder's substitution, marked as used; `None` if the map does not define it.
fn lookup<T: Clone>(map: &HashMap<String, T>, used: &mut HashSet<String>, key: &str) -> Option<T> {
    let found = map.get(key).cloned()?;
    used.insert(key.to_owned());
    Some(found)
}

fn is_placeholder(k: &str, sigil: char) -> bool {
    k.strip_prefix(sigil)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(is_word_char))
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One step of a document path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathElem {
    Attr(String),
    Index(usize),
}

/// A document path; the first element is always an attribute name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<PathElem>);

impl Path {
    /// The top-level attribute the path starts at.
    pub fn top(&self) -> &str {
        match &self.0[0] {
            PathElem::Attr(a) => a,
            PathElem::Index(_) => unreachable!("paths start with an attribute"),
        }
    }

    /// The single attribute name, when the path is just one.
    pub fn as_attr(&self) -> Option<&str> {
        match self.0.as_slice() {
            [PathElem::Attr(a)] => Some(a),
            _ => None,
        }
    }

    /// The value at this path.
    pub fn resolve<'a>(&self, item: &'a Item) -> Option<&'a Value> {
        let mut cur = item.get(self.top())?;
        for e in &self.0[1..] {
            cur = match (e, cur) {
                (PathElem::Attr(a), Value::M(m)) => m.get(a)?,
                (PathElem::Index(i), Value::L(l)) => l.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    fn is_prefix_of(&self, other: &Path) -> bool {
        self.0.len() <= other.0.len() && other.0[..self.0.len()] == self.0[..]
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| match e {
                PathElem::Attr(a) => a.clone(),
                PathElem::Index(i) => format!("[{i}]"),
            })
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator as written in an expression.
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A value in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Value(Value),
    Size(Path),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Or(Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(Operand, CmpOp, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(Path),
    NotExists(Path),
    AttrType(Path, Operand),
    BeginsWith(Operand, Operand),
    Contains(Operand, Operand),
}

impl Operand {
    fn eval<'a>(&'a self, item: &'a Item) -> Option<Cow<'a, Value>> {
        match self {
            Operand::Value(v) => Some(Cow::Borrowed(v)),
            Operand::Path(p) => p.resolve(item).map(Cow::Borrowed),
            Operand::Size(p) => {
                let n = match p.resolve(item)? {
                    Value::S(s) => s.len(),
                    Value::B(b) => b.len(),
                    Value::Ss(s) => s.len(),
                    Value::Ns(s) => s.len(),
                    Value::Bs(s) => s.len(),
                    Value::L(l) => l.len(),
                    Value::M(m) => m.len(),
                    _ => return None,
                };
                Number::parse(&n.to_string())
                    .ok()
                    .map(|n| Cow::Owned(Value::N(n)))
            }
        }
    }
}

/// Orders two scalars of the same comparable type (N, S, B).
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::N(x), Value::N(y)) => Some(x.cmp(y)),
        (Value::S(x), Value::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::B(x), Value::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Cond {
    /// Evaluates against an item (an absent item is an empty one).
    pub fn eval(&self, item: &Item) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Cond::Or(a, b) => a.eval(item) || b.eval(item),
            Cond::And(a, b) => a.eval(item) && b.eval(item),
            Cond::Not(c) => !c.eval(item),
            Cond::Cmp(a, op, b) => {
                let (a, b) = (a.eval(item), b.eval(item));
                match op {
                    CmpOp::Eq => matches!((a, b), (Some(a), Some(b)) if a == b),
                    // A missing attribute is not equal to anything.
                    CmpOp::Ne => !matches!((a, b), (Some(a), Some(b)) if a == b),
                    _ => {
                        let (Some(a), Some(b)) = (a, b) else {
                            return false;
                        };
                        matches!(
                            (compare(&a, &b), op),
                            (Some(Less), CmpOp::Lt | CmpOp::Le)
                                | (Some(Equal), CmpOp::Le | CmpOp::Ge)
                                | (Some(Greater), CmpOp::Gt | CmpOp::Ge)
                        )
                    }
                }
            }
            Cond::Between(v, lo, hi) => {
                let (Some(v), Some(lo), Some(hi)) = (v.eval(item), lo.eval(item), hi.eval(item))
                else {
                    return false;
                };
                matches!(compare(&v, &lo), Some(Greater | Equal))
                    && matches!(compare(&v, &hi), Some(Less | Equal))
            }
            Cond::In(v, list) => {
                let Some(v) = v.eval(item) else {
                    return false;
                };
                list.iter().any(|o| o.eval(item).is_some_and(|o| o == v))
            }
            Cond::Exists(p) => p.resolve(item).is_some(),
            Cond::NotExists(p) => p.resolve(item).is_none(),
            Cond::AttrType(p, t) => match (p.resolve(item), t.eval(item)) {
                (Some(v), Some(t)) => matches!(&*t, Value::S(t) if t == v.type_name()),
                _ => false,
            },
            Cond::BeginsWith(a, b) => match (a.eval(item), b.eval(item)) {
                (Some(a), Some(b)) => match (&*a, &*b) {
                    (Value::S(a), Value::S(b)) => a.starts_with(b.as_str()),
                    (Value::B(a), Value::B(b)) => a.starts_with(b),
                    _ => false,
                },
                _ => false,
            },
            Cond::Contains(a, b) => match (a.eval(item), b.eval(item)) {
                (Some(a), Some(b)) => match (&*a, &*b) {
                    (Value::S(a), Value::S(b)) => a.contains(b.as_str()),
                    (Value::B(a), Value::B(b)) => {
                        b.is_empty() || a.windows(b.len()).any(|w| w == b.as_slice())
                    }
                    (Value::Ss(s), Value::S(b)) => s.binary_search(b).is_ok(),
                    (Value::Ns(s), Value::N(b)) => s.binary_search(b).is_ok(),
                    (Value::Bs(s), Value::B(b)) => s.binary_search(b).is_ok(),
                    (Value::L(l), b) => l.iter().any(|e| e == b),
                    _ => false,
                },
                _ => false,
            },
        }
    }
}

/// The right-hand side of a `SET` action.
#[derive(Debug, Clone, PartialEq)]
pub enum SetValue {
    Operand(UpdateOperand),
    Plus(UpdateOperand, UpdateOperand),
    Minus(UpdateOperand, UpdateOperand),
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOperand {
    Path(Path),
    Value(Value),
    IfNotExists(Path, Box<UpdateOperand>),
    ListAppend(Box<UpdateOperand>, Box<UpdateOperand>),
}

/// A parsed update expression.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    pub set: Vec<(Path, SetValue)>,
    pub remove: Vec<Path>,
    pub add: Vec<(Path, Value)>,
    pub delete: Vec<(Path, Value)>,
}

fn bad_operand_type() -> ApiError {
    ApiError::validation("An operand in the update expression has an incorrect data type")
}

fn missing_attribute() -> ApiError {
    ApiError::validation(
        "The provided expression refers to an attribute that does not exist in the item",
    )
}

fn invalid_path() -> ApiError {
    ApiError::validation(
        "The document path provided in the update expression is invalid for update",
    )
}

impl UpdateOperand {
    fn eval(&self, base: &Item) -> Result<Value, ApiError> {
        match self {
            UpdateOperand::Value(v) => Ok(v.clone()),
            UpdateOperand::Path(p) => p.resolve(base).cloned().ok_or_else(missing_attribute),
            UpdateOperand::IfNotExists(p, default) => match p.resolve(base) {
                Some(v) => Ok(v.clone()),
                None => default.eval(base),
            },
            UpdateOperand::ListAppend(a, b) => match (a.eval(base)?, b.eval(base)?) {
                (Value::L(mut a), Value::L(b)) => {
                    a.extend(b);
                    Ok(Value::L(a))
                }
                _ => Err(bad_operand_type()),
            },
        }
    }
}

impl Update {
    /// Every path the expression writes.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.set
            .iter()
            .map(|(p, _)| p)
            .chain(self.remove.iter())
            .chain(self.add.iter().map(|(p, _)| p))
            .chain(self.delete.iter().map(|(p, _)| p))
    }

    fn check_overlaps(&self) -> Result<(), ApiError> {
        let paths: Vec<&Path> = self.paths().collect();
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                if a.is_prefix_of(b) || b.is_prefix_of(a) {
                    return Err(ApiError::validation(format!(
                        "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of these paths; path one: {a}, path two: {b}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies the update to `item`. Every operand reads the item as it was before the update.
    pub fn apply(&self, item: &mut Item) -> Result<(), ApiError> {
        let base = item.clone();
        for (path, value) in &self.set {
            let v = match value {
                SetValue::Operand(o) => o.eval(&base)?,
                SetValue::Plus(a, b) | SetValue::Minus(a, b) => {
                    let (Value::N(a), Value::N(b)) = (a.eval(&base)?, b.eval(&base)?) else {
                        return Err(bad_operand_type());
                    };
                    let b = if matches!(value, SetValue::Minus(..)) {
                        negate(&b)?
                    } else {
                        b
                    };
                    Value::N(a.add(&b)?)
                }
            };
            set_path(item, path, v)?;
        }
        for path in &self.remove {
            remove_path(item, path);
        }
        for (path, value) in &self.add {
            let name = path.top().to_owned();
            let merged = match (item.remove(&name), value) {
                (None, v) => v.clone(),
                (Some(Value::N(a)), Value::N(b)) => Value::N(a.add(b)?),
                (Some(Value::Ss(a)), Value::Ss(b)) => Value::Ss(union(a, b)),
                (Some(Value::Ns(a)), Value::Ns(b)) => Value::Ns(union(a, b)),
                (Some(Value::Bs(a)), Value::Bs(b)) => Value::Bs(union(a, b)),
                _ => return Err(bad_operand_type()),
            };
            item.insert(name, merged);
        }
        for (path, value) in &self.delete {
            let name = path.top().to_owned();
            let Some(current) = item.remove(&name) else {
                continue;
            };
            let rest = match (current, value) {
                (Value::Ss(a), Value::Ss(b)) => difference(a, b).map(Value::Ss),
                (Value::Ns(a), Value::Ns(b)) => difference(a, b).map(Value::Ns),
                (Value::Bs(a), Value::Bs(b)) => difference(a, b).map(Value::Bs),
                _ => return Err(bad_operand_type()),
            };
            // DynamoDB never stores an empty set: the attribute goes away.
            if let Some(rest) = rest {
                item.insert(name, rest);
            }
        }
        Ok(())
    }
}

fn negate(n: &Number) -> Result<Number, ApiError> {
    let s = n.to_string();
    Number::parse(&match s.strip_prefix('-') {
        Some(pos) => pos.to_owned(),
        None => format!("-{s}"),
    })
}

fn union<T: Ord + Clone>(mut a: Vec<T>, b: &[T]) -> Vec<T> {
    a.extend(b.iter().cloned());
    a.sort();
    a.dedup();
    a
}

fn difference<T: Ord>(a: Vec<T>, b: &[T]) -> Option<Vec<T>> {
    let rest: Vec<T> = a
        .into_iter()
        .filter(|x| b.binary_search(x).is_err())
        .collect();
    (!rest.is_empty()).then_some(rest)
}

fn set_path(item: &mut Item, path: &Path, value: Value) -> Result<(), ApiError> {
    let (last, parents) = path.0.split_last().expect("paths are non-empty");
    if parents.is_empty() {
        item.insert(path.top().to_owned(), value);
        return Ok(());
    }
    let mut cur = item.get_mut(path.top()).ok_or_else(invalid_path)?;
    for e in &parents[1..] {
        cur = match (e, cur) {
            (PathElem::Attr(a), Value::M(m)) => m.get_mut(a).ok_or_else(invalid_path)?,
            (PathElem::Index(i), Value::L(l)) => l.get_mut(*i).ok_or_else(invalid_path)?,
            _ => return Err(invalid_path()),
        };
    }
    match (last, cur) {
        (PathElem::Attr(a), Value::M(m)) => {
            m.insert(a.clone(), value);
        }
        // Past the end appends, like DynamoDB.
        (PathElem::Index(i), Value::L(l)) => match l.get_mut(*i) {
            Some(slot) => *slot = value,
            None => l.push(value),
        },
        _ => return Err(invalid_path()),
    }
    Ok(())
}

fn remove_path(item: &mut Item, path: &Path) {
    let (last, parents) = path.0.split_last().expect("paths are non-empty");
    if parents.is_empty() {
        item.remove(path.top());
        return;
    }
    let Some(mut cur) = item.get_mut(path.top()) else {
        return;
    };
    for e in &parents[1..] {
        let next = match (e, cur) {
            (PathElem::Attr(a), Value::M(m)) => m.get_mut(a),
            (PathElem::Index(i), Value::L(l)) => l.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        (PathElem::Attr(a), Value::M(m)) => {
            m.remove(a);
        }
        (PathElem::Index(i), Value::L(l)) if *i < l.len() => {
            l.remove(*i);
        }
        _ => {}
    }
}

/// The item restricted to `paths` (nested paths keep their structure; selected list elements
/// keep the order in which the projection names them).
pub fn project(item: &Item, paths: &[Path]) -> Item {
    let mut out = Item::new();
    for path in paths {
        let Some(value) = path.resolve(item) else {
            continue;
        };
        if path.0.len() == 1 {
            out.insert(path.top().to_owned(), value.clone());
            continue;
        }
        let mut slot = out
            .entry(path.top().to_owned())
            .or_insert_with(|| container_for(&path.0[1]));
        for (i, e) in path.0[1..].iter().enumerate() {
            let next = path.0.get(i + 2);
            let make = || next.map_or(Value::Null, container_for);
            slot = match (e, slot) {
                (PathElem::Attr(a), Value::M(m)) => m.entry(a.clone()).or_insert_with(make),
                (PathElem::Index(_), Value::L(l)) => {
                    l.push(make());
                    l.last_mut().expect("just pushed")
                }
                (_, other) => other,
            };
        }
        *slot = value.clone();
    }
    out
}

fn container_for(next: &PathElem) -> Value {
    match next {
        PathElem::Attr(_) => Value::M(Item::new()),
        PathElem::Index(_) => Value::L(Vec::new()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Val(String),
    Int(usize),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Cmp(CmpOp),
    Plus,
    Minus,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Tok::Ident(s) | Tok::Name(s) | Tok::Val(s) => return f.write_str(s),
            Tok::Int(i) => return write!(f, "{i}"),
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::Cmp(op) => op.symbol(),
            Tok::Plus => "+",
            Tok::Minus => "-",
        };
        f.write_str(s)
    }
}

fn tokenize(text: &str, kind: ExprKind) -> Result<Vec<Tok>, ApiError> {
    let syntax = |tok: &str| {
        ApiError::validation(format!(
            "Invalid {}: Syntax error; token: \"{tok}\"",
            kind.label()
        ))
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |start: usize| {
        let mut j = start;
        while j < chars.len() && is_word_char(chars[j]) {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        let two = |next: char| chars.get(i + 1) == Some(&next);
        let (tok, len) = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            ',' => (Tok::Comma, 1),
            '.' => (Tok::Dot, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '=' => (Tok::Cmp(CmpOp::Eq), 1),
            '<' if two('>') => (Tok::Cmp(CmpOp::Ne), 2),
            '<' if two('=') => (Tok::Cmp(CmpOp::Le), 2),
            '<' => (Tok::Cmp(CmpOp::Lt), 1),
            '>' if two('=') => (Tok::Cmp(CmpOp::Ge), 2),
            '>' => (Tok::Cmp(CmpOp::Gt), 1),
            '#' | ':' => {
                let end = word(i + 1);
                if end == i + 1 {
                    return Err(syntax(&c.to_string()));
                }
                let s: String = chars[i..end].iter().collect();
                let tok = if c == '#' { Tok::Name(s) } else { Tok::Val(s) };
                (tok, end - i)
            }
            _ if c.is_ascii_digit() => {
                let end = word(i);
                let s: String = chars[i..end].iter().collect();
                let n = s.parse::<usize>().map_err(|_| syntax(&s))?;
                (Tok::Int(n), end - i)
            }
            _ if is_word_char(c) => {
                let end = word(i);
                (Tok::Ident(chars[i..end].iter().collect()), end - i)
            }
            _ => return Err(syntax(&c.to_string())),
        };
        out.push(tok);
        i += len;
    }
    Ok(out)
}

struct Parser<'c> {
    ctx: &'c mut ExprContext,
    toks: Vec<Tok>,
    pos: usize,
    kind: ExprKind,
    /// Nesting of parentheses/functions, bounded so hostile input cannot overflow the stack.
    depth: usize,
}

const MAX_NESTING: usize = 64;

impl<'c> Parser<'c> {
    fn new(ctx: &'c mut ExprContext, text: &str, kind: ExprKind) -> Result<Parser<'c>, ApiError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(ApiError::validation(format!(
                "Invalid {}: Expression size has exceeded the maximum allowed size; expression size: {}",
                kind.label(),
                text.len()
            )));
        }
        let toks = tokenize(text, kind)?;
        if toks.is_empty() {
            return Err(ApiError::validation(format!(
                "Invalid {}: The expression can not be empty;",
                kind.label()
            )));
        }
        ctx.parsed_any = true;
        Ok(Parser {
            ctx,
            toks,
            pos: 0,
            kind,
            depth: 0,
        })
    }

    fn err(&self, message: impl fmt::Display) -> ApiError {
        ApiError::validation(format!("Invalid {}: {message}", self.kind.label()))
    }

    fn syntax_error(&self) -> ApiError {
        match self.toks.get(self.pos) {
            Some(t) => self.err(format_args!("Syntax error; token: \"{t}\"")),
            None => self.err("Syntax error; token: \"<EOF>\""),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok) -> Result<(), ApiError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.syntax_error())
        }
    }

    fn end(&self) -> Result<(), ApiError> {
        if self.pos == self.toks.len() {
            Ok(())
        } else {
            Err(self.syntax_error())
        }
    }

    fn keyword(&self, offset: usize) -> Option<String> {
        match self.toks.get(self.pos + offset) {
            Some(Tok::Ident(s)) => Some(s.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.keyword(0).as_deref() == Some(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), ApiError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.err("The expression has too many nested levels"));
        }
        Ok(())
    }

    fn path(&mut self) -> Result<Path, ApiError> {
        let first = self.path_name()?;
        let mut elems = vec![PathElem::Attr(first)];
        loop {
            if self.eat(&Tok::Dot) {
                elems.push(PathElem::Attr(self.path_name()?));
            } else if self.eat(&Tok::LBracket) {
                let Some(Tok::Int(i)) = self.peek().cloned() else {
                    return Err(self.syntax_error());
                };
                self.pos += 1;
                self.expect(&Tok::RBracket)?;
                elems.push(PathElem::Index(i));
            } else {
                return Ok(Path(elems));
            }
        }
    }

    fn path_name(&mut self) -> Result<String, ApiError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                Ok(s)
            }
            Some(Tok::Name(n)) => {
                self.pos += 1;
                lookup(&self.ctx.names, &mut self.ctx.used_names, &n).ok_or_else(|| {
                    self.err(format_args!(
                        "An expression attribute name used in the document path is not defined; attribute name: {n}"
                    ))
                })
            }
            _ => Err(self.syntax_error()),
        }
    }

    fn value(&mut self) -> Result<Value, ApiError> {
        let Some(Tok::Val(v)) = self.peek().cloned() else {
            return Err(self.syntax_error());
        };
        self.pos += 1;
        lookup(&self.ctx.values, &mut self.ctx.used_values, &v).ok_or_else(|| {
            self.err(format_args!(
                "An expression attribute value used in expression is not defined; attribute value: {v}"
            ))
        })
    }

    fn cond_or(&mut self) -> Result<Cond, ApiError> {
        self.left_assoc("OR", Self::cond_and, Cond::Or)
    }

    fn cond_and(&mut self) -> Result<Cond, ApiError> {
        self.left_assoc("AND", Self::cond_not, Cond::And)
    }

    /// `operand (keyword operand)*`, joined from the left.
    fn left_assoc(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Result<Cond, ApiError>,
        join: fn(Box<Cond>, Box<Cond>) -> Cond,
    ) -> Result<Cond, ApiError> {
        let mut left = operand(self)?;
        while self.eat_keyword(keyword) {
            let right = operand(self)?;
            left = join(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn cond_not(&mut self) -> Result<Cond, ApiError> {
        if self.eat_keyword("NOT") {
            self.enter()?;
            let inner = self.cond_not()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, ApiError> {
        if self.eat(&Tok::LParen) {
            self.enter()?;
            let inner = self.cond_or()?;
            self.depth -= 1;
            self.expect(&Tok::RParen)?;
            return Ok(inner);
        }
        if let (Some(Tok::Ident(f)), Some(Tok::LParen)) =
            (self.peek().cloned(), self.toks.get(self.pos + 1))
            && f != "size"
        {
            self.pos += 2;
            let cond = match f.as_str() {
                "attribute_exists" => Cond::Exists(self.path()?),
                "attribute_not_exists" => Cond::NotExists(self.path()?),
                "attribute_type" => {
                    let p = self.path()?;
                    self.expect(&Tok::Comma)?;
                    Cond::AttrType(p, self.operand()?)
                }
                "begins_with" => {
                    let a = self.operand()?;
                    self.expect(&Tok::Comma)?;
                    Cond::BeginsWith(a, self.operand()?)
                }
                "contains" => {
                    let a = self.operand()?;
                    self.expect(&Tok::Comma)?;
                    Cond::Contains(a, self.operand()?)
                }
                other => {
                    return Err(self.err(format_args!("Invalid function name; function: {other}")));
                }
            };
            self.expect(&Tok::RParen)?;
            return Ok(cond);
        }
        let left = self.operand()?;
        if self.eat_keyword("BETWEEN") {
            let lo = self.operand()?;
            if !self.eat_keyword("AND") {
                return Err(self.syntax_error());
            }
            let hi = self.operand()?;
            return Ok(Cond::Between(left, lo, hi));
        }
        if self.eat_keyword("IN") {
            self.expect(&Tok::LParen)?;
            let mut list = vec![self.operand()?];
            while self.eat(&Tok::Comma) {
                list.push(self.operand()?);
            }
            self.expect(&Tok::RParen)?;
            return Ok(Cond::In(left, list));
        }
        let Some(&Tok::Cmp(op)) = self.peek() else {
            return Err(self.syntax_error());
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Cond::Cmp(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ApiError> {
        match self.peek() {
            Some(Tok::Val(_)) => Ok(Operand::Value(self.value()?)),
            Some(Tok::Ident(f))
                if f == "size" && self.toks.get(self.pos + 1) == Some(&Tok::LParen) =>
            {
                self.pos += 2;
                let p = self.path()?;
                self.expect(&Tok::RParen)?;
                Ok(Operand::Size(p))
            }
            Some(Tok::Ident(_) | Tok::Name(_)) => Ok(Operand::Path(self.path()?)),
            _ => Err(self.syntax_error()),
        }
    }

    fn update(&mut self) -> Result<Update, ApiError> {
        let mut update = Update::default();
        let mut seen: Vec<String> = Vec::new();
        while self.pos < self.toks.len() {
            let Some(section) = self.keyword(0) else {
                return Err(self.syntax_error());
            };
            if !matches!(section.as_str(), "SET" | "REMOVE" | "ADD" | "DELETE") {
                return Err(self.syntax_error());
            }
            if seen.contains(&section) {
                return Err(self.err(format_args!(
                    "The \"{section}\" section can only be used once in an update expression;"
                )));
            }
            self.pos += 1;
            seen.push(section.clone());
            loop {
                match section.as_str() {
                    "SET" => {
                        let path = self.path()?;
                        self.expect(&Tok::Cmp(CmpOp::Eq))?;
                        let a = self.update_operand()?;
                        let value = if self.eat(&Tok::Plus) {
                            SetValue::Plus(a, self.update_operand()?)
                        } else if self.eat(&Tok::Minus) {
                            SetValue::Minus(a, self.update_operand()?)
                        } else {
                            SetValue::Operand(a)
                        };
                        update.set.push((path, value));
                    }
                    "REMOVE" => update.remove.push(self.path()?),
                    _ => {
                        let path = self.path()?;
                        if path.as_attr().is_none() {
                            return Err(self.err(format_args!(
                                "{section} can only be used on top-level attributes; path: {path}"
                            )));
                        }
                        let value = self.value()?;
                        let is_set = matches!(value, Value::Ss(_) | Value::Ns(_) | Value::Bs(_));
                        let ok = if section == "ADD" {
                            is_set || matches!(value, Value::N(_))
                        } else {
                            is_set
                        };
                        if !ok {
                            return Err(self.err(format_args!(
                                "Incorrect operand type for operator or function; operator: {section}, operand type: {}",
                                operand_type_name(&value)
                            )));
                        }
                        if section == "ADD" {
                            update.add.push((path, value));
                        } else {
                            update.delete.push((path, value));
                        }
                    }
                }
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        Ok(update)
    }

    fn update_operand(&mut self) -> Result<UpdateOperand, ApiError> {
        if let (Some(Tok::Ident(f)), Some(Tok::LParen)) =
            (self.peek().cloned(), self.toks.get(self.pos + 1))
        {
            self.pos += 2;
            self.enter()?;
            let operand = match f.as_str() {
                "if_not_exists" => {
                    let p = self.path()?;
                    self.expect(&Tok::Comma)?;
                    UpdateOperand::IfNotExists(p, Box::new(self.update_operand()?))
                }
                "list_append" => {
                    let a = self.update_operand()?;
                    self.expect(&Tok::Comma)?;
                    UpdateOperand::ListAppend(Box::new(a), Box::new(self.update_operand()?))
                }
                other => {
                    return Err(self.err(format_args!("Invalid function name; function: {other}")));
                }
            };
            self.depth -= 1;
            self.expect(&Tok::RParen)?;
            return Ok(operand);
        }
        match self.peek() {
            Some(Tok::Val(_)) => Ok(UpdateOperand::Value(self.value()?)),
            Some(Tok::Ident(_) | Tok::Name(_)) => Ok(UpdateOperand::Path(self.path()?)),
            _ => Err(self.syntax_error()),
        }
    }
}

/// DynamoDB's operand type names in update-expression messages.
fn operand_type_name(v: &Value) -> &'static str {
    match v {
        Value::S(_) => "STRING",
        Value::N(_) => "NUMBER",
        Value::B(_) => "BINARY",
        Value::Bool(_) => "BOOLEAN",
        Value::Null => "NULL",
        Value::Ss(_) => "SS",
        Value::Ns(_) => "NS",
        Value::Bs(_) => "BS",
        Value::L(_) => "LIST",
        Value::M(_) => "MAP",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::value::parse_item;

    fn ctx(names: Json, values: Json) -> ExprContext {
        let given = |j: &Json| j.as_object().is_some_and(|m| !m.is_empty());
        let names = given(&names).then_some(&names);
        let values = given(&values).then_some(&values);
        ExprContext::new(names, values).unwrap()
    }

    #[test]
    fn conditions_evaluate() {
        let item = parse_item(&json!({"g": {"N": "3"}, "s": {"S": "hello"}, "l": {"L": [{"N": "1"}]}, "ss": {"SS": ["a", "b"]}})).unwrap();
        let mut c = ctx(
            json!({"#g": "g", "#x": "x"}),
            json!({":g": {"N": "3"}, ":p": {"S": "he"}, ":a": {"S": "a"}, ":lo": {"N": "1"}, ":hi": {"N": "5"}}),
        );
        let cases = [
            ("#g = :g AND attribute_exists(s)", true),
            ("#g <> :g OR attribute_not_exists(#x)", true),
            ("NOT (#g = :g)", false),
            ("begins_with(s, :p) and contains(ss, :a)", true),
            ("#g BETWEEN :lo AND :hi", true),
            ("#g IN (:lo, :hi)", false),
            ("size(s) > :g", true),
            ("l[0] = :lo", true),
            ("#x < :hi", false),
            ("#x <> :hi", true),
        ];
        for (text, expected) in cases {
            let cond = c.condition(text, ExprKind::Condition).unwrap();
            assert_eq!(cond.eval(&item), expected, "{text}");
        }
        c.finish().unwrap();
    }

    #[test]
    fn placeholders_are_checked() {
        let mut c = ctx(
            json!({"#a": "a"}),
            json!({":v": {"S": "x"}, ":unused": {"S": "y"}}),
        );
        let e = c.condition("#b = :v", ExprKind::Condition).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid ConditionExpression: An expression attribute name used in the document path is not defined; attribute name: #b"
        );
        c.condition("#a = :v", ExprKind::Condition).unwrap();
        assert_eq!(
            c.finish().unwrap_err().message,
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {:unused}"
        );
    }

    #[test]
    fn update_set_add_delete_remove() {
        let mut item = parse_item(
            &json!({"k": {"S": "1"}, "n": {"N": "1"}, "ss": {"SS": ["a", "b"]}, "m": {"M": {}}}),
        )
        .unwrap();
        let mut c = ctx(
            json!({"#s": "ss"}),
            json!({":one": {"N": "1"}, ":ab": {"SS": ["a", "b"]}, ":c": {"SS": ["c"]}, ":x": {"S": "x"}}),
        );
        let u = c
            .update("SET n = n + :one, m.x = :x ADD c :c, cnt :one DELETE #s :ab")
            .unwrap();
        c.finish().unwrap();
        u.apply(&mut item).unwrap();
        let expected = parse_item(&json!({"k": {"S": "1"}, "n": {"N": "2"}, "c": {"SS": ["c"]}, "cnt": {"N": "1"}, "m": {"M": {"x": {"S": "x"}}}})).unwrap();
        assert_eq!(item, expected);
    }

    #[test]
    fn update_errors() {
        let mut c = ctx(json!({}), json!({":s": {"S": "x"}, ":n": {"N": "1"}}));
        assert_eq!(
            c.update("ADD a :s").unwrap_err().message,
            "Invalid UpdateExpression: Incorrect operand type for operator or function; operator: ADD, operand type: STRING"
        );
        assert!(
            c.update("SET a = :n REMOVE a")
                .unwrap_err()
                .message
                .contains("overlap")
        );
        assert!(
            c.update("SET a = :n SET b = :n")
                .unwrap_err()
                .message
                .contains("only be used once")
        );
        assert!(c.update("SET a = ").is_err());
        assert!(c.update("").is_err());
    }

    #[test]
    fn projection_keeps_structure() {
        let item = parse_item(&json!({"a": {"M": {"b": {"S": "x"}, "c": {"S": "y"}}}, "d": {"N": "1"}, "e": {"S": "z"}})).unwrap();
        let mut c = ExprContext::default();
        let paths = c.projection("a.b, d, missing").unwrap();
        let p = project(&item, &paths);
        assert_eq!(
            p,
            parse_item(&json!({"a": {"M": {"b": {"S": "x"}}}, "d": {"N": "1"}})).unwrap()
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut c = ctx(json!({"#a": "a"}), json!({":v": {"N": "1"}}));
        let inputs = [
            "(((((",
            ")",
            "#a = = :v",
            "a[",
            "a[x]",
            "a.",
            "NOT",
            "a BETWEEN :v",
            "a IN ()",
            "size(",
            "#",
            ":",
            "a = :v AND",
            "SET",
            "ADD a",
            "DELETE",
            "REMOVE ,",
            "$",
            "attribute_exists()",
            "a[99999999999999999999999]",
        ];
        for text in inputs {
            let _ = c.condition(text, ExprKind::Condition);
            let _ = c.update(text);
            let _ = c.projection(text);
        }
        let deep = "(".repeat(500) + "a = :v" + &")".repeat(500);
        assert!(c.condition(&deep, ExprKind::Condition).is_err());
        let deep_not = "NOT ".repeat(500) + "a = :v";
        assert!(c.condition(&deep_not, ExprKind::Condition).is_err());
    }
}

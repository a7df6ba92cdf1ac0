//! PartiQL: the subset of statements BatchExecuteStatement runs (see `ops::batch_statement`).
//!
//! Parsed: `UPDATE <table> SET <attr> = <value>, ... [REMOVE <attr>] ... [WHERE <predicate>] [;]`
//! (`SET` and `REMOVE` clauses in any order and number, each `REMOVE` naming one attribute, as
//! DynamoDB's grammar has it), where
//!
//! - names are double-quoted (`"a"`, `""` for a quote inside) or bare (`a`), and name
//!   top-level attributes only;
//! - a value is a positional parameter `?`, a string `'x'` (`''` for a quote inside) or a
//!   number;
//! - an assigned value is a value, `SET_ADD(<attr>, <value>)` or `SET_DELETE(<attr>, <value>)`
//!   (the first argument naming the assigned attribute, as DynamoDB requires);
//! - a predicate is `<attr> = | <> | != | < | <= | > | >= <value>`, `<attr> IS [NOT] MISSING`,
//!   joined with `AND`, `OR`, `NOT` and parentheses.
//!
//! And `INSERT INTO <table> VALUE {'<attr>': <value>, ...} [;]`, the tuple's names being string
//! literals and its values values as above: it creates the item, and fails with `DuplicateItem`
//! if the key has one.
//!
//! Anything else (other verbs, `RETURNING`, nested paths, arithmetic, other functions,
//! collection literals) is refused as [`ParseError::Unsupported`], which says that dynamo-sim
//! does not implement it, rather than pretending to be DynamoDB's syntax error.

use std::fmt;

use crate::expr::CmpOp;
use crate::number::Number;
use crate::value::Value;

/// DynamoDB's refusal of a statement with more placeholders than the request has parameters.
pub const PARAMETER_COUNT_MISMATCH: &str =
    "Number of parameters in request and statement don't match.";

/// Parentheses and `NOT`s deeper than this are refused, so hostile input cannot overflow the
/// stack.
const MAX_NESTING: usize = 64;

/// Where a token is, as DynamoDB prints positions in messages: `line:column:length`, 1-based,
/// counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    line: usize,
    col: usize,
    len: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.line, self.col, self.len)
    }
}

/// Why a statement cannot run, before anything about the tables is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed text (an unterminated quote, nothing at all).
    Syntax(String),
    /// A well-formed statement refused in DynamoDB's own words.
    Refused(String),
    /// A statement outside the subset the simulator implements.
    Unsupported(String),
}

impl ParseError {
    /// The `Message` of the statement's `ValidationError`.
    pub fn message(&self) -> String {
        match self {
            ParseError::Syntax(m) => {
                format!("Statement wasn't well formed, can't be processed: {m}")
            }
            ParseError::Refused(m) => m.clone(),
            ParseError::Unsupported(m) => format!(
                "dynamo-sim implements only UPDATE ... SET ... WHERE <key> = ? and INSERT INTO ... VALUE {{...}} statements in BatchExecuteStatement; {m}"
            ),
        }
    }
}

/// Whether a statement reads or writes, by its first keyword (DynamoDB refuses a batch that
/// mixes the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Read,
    Write,
}

/// A value in a statement: the n-th parameter (0-based) or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Param(usize),
    Lit(Value),
}

impl Operand {
    /// The value, given the request's parameters (their count was checked against the
    /// statement's placeholders before).
    pub fn bind<'a>(&'a self, params: &'a [Value]) -> &'a Value {
        match self {
            Operand::Param(i) => &params[*i],
            Operand::Lit(v) => v,
        }
    }
}

/// The right-hand side of one `SET` assignment.
#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Value(Operand),
    /// `SET_ADD` (`delete` false) or `SET_DELETE` of the members; `first_at` is where the
    /// first argument is, which DynamoDB names when the members turn out not to be a set.
    SetCall {
        delete: bool,
        members: Operand,
        first_at: Pos,
    },
}

/// A WHERE predicate.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    Or(Box<Pred>, Box<Pred>),
    And(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
    Cmp(String, CmpOp, Operand),
    /// `IS MISSING` (`negated` false) or `IS NOT MISSING`.
    Missing {
        attr: String,
        negated: bool,
    },
}

impl Pred {
    /// The conditions joined by the top-level `AND`s, in the order written (parentheses
    /// around an `AND` do not change what it pins).
    pub fn conjuncts(&self) -> Vec<&Pred> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(p) = stack.pop() {
            match p {
                Pred::And(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Every comparison in the predicate, in the order written.
    pub fn comparisons(&self) -> Vec<(&str, CmpOp, &Operand)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(p) = stack.pop() {
            match p {
                Pred::Or(a, b) | Pred::And(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Pred::Not(a) => stack.push(a),
                Pred::Cmp(attr, op, v) => out.push((attr.as_str(), *op, v)),
                Pred::Missing { .. } => {}
            }
        }
        out
    }
}

/// A parsed `INSERT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub table: String,
    /// `(attribute, value)` in the order written.
    pub fields: Vec<(String, Operand)>,
    /// How many `?` the statement holds.
    pub placeholders: usize,
}

/// A parsed statement of the implemented subset.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Update(Update),
    Insert(Insert),
}

/// A parsed `UPDATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub table: String,
    /// `(attribute, value)` in the order written.
    pub sets: Vec<(String, Rhs)>,
    /// The attributes `REMOVE` clauses name, in the order written.
    pub removes: Vec<String>,
    pub predicate: Option<Pred>,
    /// How many `?` the statement holds.
    pub placeholders: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: a keyword, a function or an unquoted name.
    Word(String),
    /// A double-quoted name.
    Quoted(String),
    Str(String),
    Num(String),
    Param,
    Sym(String),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) | Tok::Num(w) | Tok::Sym(w) => f.write_str(w),
            Tok::Quoted(q) => write!(f, "\"{}\"", q.replace('"', "\"\"")),
            Tok::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Tok::Param => f.write_str("?"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, Pos)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0, 1, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            (i, line, col) = (i + 1, line + 1, 1);
            continue;
        }
        if c.is_whitespace() {
            (i, col) = (i + 1, col + 1);
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            // A comment, to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        let tok = match c {
            '"' | '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            let what = if c == '"' { "identifier" } else { "string" };
                            return Err(ParseError::Syntax(format!(
                                "Unterminated quoted {what} at {line}:{col}"
                            )));
                        }
                        Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                            s.push(c);
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            s.push(other);
                            i += 1;
                        }
                    }
                }
                if c == '"' {
                    Tok::Quoted(s)
                } else {
                    Tok::Str(s)
                }
            }
            '?' => {
                i += 1;
                Tok::Param
            }
            _ if c.is_ascii_digit() => {
                let digits = |i: &mut usize| {
                    while chars.get(*i).is_some_and(char::is_ascii_digit) {
                        *i += 1;
                    }
                };
                digits(&mut i);
                if chars.get(i) == Some(&'.') {
                    i += 1;
                    digits(&mut i);
                }
                if matches!(chars.get(i), Some('e' | 'E')) {
                    let mut j = i + 1;
                    if matches!(chars.get(j), Some('+' | '-')) {
                        j += 1;
                    }
                    if chars.get(j).is_some_and(char::is_ascii_digit) {
                        i = j;
                        digits(&mut i);
                    }
                }
                Tok::Num(chars[start..i].iter().collect())
            }
            _ if c.is_alphabetic() || c == '_' => {
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                Tok::Word(chars[start..i].iter().collect())
            }
            _ => {
                let pair: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let len = if ["<>", "!=", "<=", ">=", "<<", ">>"].contains(&pair.as_str()) {
                    2
                } else {
                    1
                };
                i += len;
                Tok::Sym(chars[start..i].iter().collect())
            }
        };
        let len = i - start;
        out.push((tok, Pos { line, col, len }));
        // Quoted tokens may hold newlines: keep the line count honest.
        for &ch in &chars[start..i] {
            if ch == '\n' {
                (line, col) = (line + 1, 1);
            } else {
                col += 1;
            }
        }
    }
    Ok(out)
}

/// Whether the statement reads or writes, from its first keyword; `None` if it has none.
pub fn verb(text: &str) -> Option<Verb> {
    let toks = lex(text).ok()?;
    match toks.first() {
        Some((Tok::Word(w), _)) => match w.to_ascii_uppercase().as_str() {
            "SELECT" => Some(Verb::Read),
            "INSERT" | "UPDATE" | "DELETE" => Some(Verb::Write),
            _ => None,
        },
        _ => None,
    }
}

/// Parses one `UPDATE` (an `INSERT` is refused as unsupported here; see [`parse_statement`]).
#[cfg(test)]
pub fn parse(text: &str) -> Result<Update, ParseError> {
    match parse_statement(text)? {
        Statement::Update(u) => Ok(u),
        Statement::Insert(_) => Err(unsupported("INSERT statements are not implemented here")),
    }
}

/// Parses one statement of the implemented subset.
pub fn parse_statement(text: &str) -> Result<Statement, ParseError> {
    let toks = lex(text)?;
    let placeholders = toks.iter().filter(|(t, _)| *t == Tok::Param).count();
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        refusal: None,
    };
    let is_insert = matches!(p.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("INSERT"));
    let statement = if is_insert {
        Statement::Insert(p.insert(placeholders)?)
    } else {
        Statement::Update(p.statement(placeholders)?)
    };
    match p.refusal {
        Some(refusal) => Err(ParseError::Refused(refusal)),
        None => Ok(statement),
    }
}

struct Parser {
    toks: Vec<(Tok, Pos)>,
    pos: usize,
    depth: usize,
    /// The first refusal in DynamoDB's words, reported once the whole statement has parsed
    /// (so that an unsupported part further on wins, as a syntax error would).
    refusal: Option<String>,
}

/// `TRUE`, `FALSE`, `NULL` and `MISSING`: literals, not names.
fn is_literal_keyword(word: &str) -> bool {
    ["TRUE", "FALSE", "NULL", "MISSING"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn unsupported(message: impl Into<String>) -> ParseError {
    ParseError::Unsupported(message.into())
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn peek_at(&self, offset: usize) -> Option<&Tok> {
        self.toks.get(self.pos + offset).map(|(t, _)| t)
    }

    fn pos_here(&self) -> Option<Pos> {
        self.toks.get(self.pos).map(|(_, p)| *p)
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let hit = self.is_keyword(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(s)) if s == sym)
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let hit = self.is_sym(sym);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// "unexpected `tok` at l:c:n (expected ...)", or "unexpected end of statement".
    fn unexpected(&self, expected: &str) -> ParseError {
        match self.toks.get(self.pos) {
            Some((t, at)) => unsupported(format!("unexpected {t} at {at} (expected {expected})")),
            None => unsupported(format!("unexpected end of statement (expected {expected})")),
        }
    }

    fn refuse(&mut self, message: String) {
        self.refusal.get_or_insert(message);
    }

    fn statement(&mut self, placeholders: usize) -> Result<Update, ParseError> {
        let Some(first) = self.peek().cloned() else {
            return Err(ParseError::Syntax("Empty statement".into()));
        };
        match &first {
            Tok::Word(w) if w.eq_ignore_ascii_case("UPDATE") => self.pos += 1,
            Tok::Word(w)
                if ["SELECT", "DELETE", "EXISTS", "FROM"]
                    .iter()
                    .any(|v| w.eq_ignore_ascii_case(v)) =>
            {
                return Err(unsupported(format!(
                    "{} statements are not implemented",
                    w.to_ascii_uppercase()
                )));
            }
            _ => return Err(self.unexpected("UPDATE")),
        }
        let table = self.name("a table name")?;
        if self.is_sym(".") {
            return Err(unsupported("UPDATE of an index is not implemented"));
        }
        if !self.is_keyword("SET") && !self.is_keyword("REMOVE") {
            return Err(self.unexpected("SET"));
        }
        let (mut sets, mut removes) = (Vec::new(), Vec::new());
        loop {
            if self.eat_keyword("SET") {
                loop {
                    sets.push(self.assignment()?);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
            } else if self.eat_keyword("REMOVE") {
                removes.push(self.name("an attribute name")?);
            } else {
                break;
            }
        }
        let predicate = if self.eat_keyword("WHERE") {
            Some(self.pred_or()?)
        } else {
            None
        };
        if self.is_keyword("RETURNING") {
            return Err(unsupported("RETURNING is not implemented"));
        }
        self.eat_sym(";");
        if self.peek().is_some() {
            return Err(self.unexpected("the end of the statement"));
        }
        Ok(Update {
            table,
            sets,
            removes,
            predicate,
            placeholders,
        })
    }

    /// `INSERT INTO <table> VALUE {'<attr>': <value>, ...} [;]`, the `INSERT` not yet taken.
    fn insert(&mut self, placeholders: usize) -> Result<Insert, ParseError> {
        self.pos += 1;
        if !self.eat_keyword("INTO") {
            return Err(self.unexpected("INTO"));
        }
        let table = self.name("a table name")?;
        if self.is_sym(".") {
            return Err(unsupported("INSERT into an index is not implemented"));
        }
        if self.is_keyword("VALUES") {
            return Err(unsupported(
                "VALUES lists are not implemented (one item: VALUE {...})",
            ));
        }
        if !self.eat_keyword("VALUE") {
            return Err(self.unexpected("VALUE"));
        }
        if !self.eat_sym("{") {
            return Err(self.unexpected("{"));
        }
        let mut fields: Vec<(String, Operand)> = Vec::new();
        loop {
            let name = match self.peek().cloned() {
                Some(Tok::Str(s)) => s,
                _ => return Err(self.unexpected("an attribute name in single quotes")),
            };
            self.pos += 1;
            if !self.eat_sym(":") {
                return Err(self.unexpected(":"));
            }
            let value = self.value("a value")?;
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(unsupported(format!(
                    "an INSERT naming the attribute {name} twice is not implemented"
                )));
            }
            fields.push((name, value));
            if !self.eat_sym(",") {
                break;
            }
        }
        if !self.eat_sym("}") {
            return Err(self.unexpected("}"));
        }
        if self.is_keyword("RETURNING") {
            return Err(unsupported("RETURNING is not implemented"));
        }
        self.eat_sym(";");
        if self.peek().is_some() {
            return Err(self.unexpected("the end of the statement"));
        }
        Ok(Insert {
            table,
            fields,
            placeholders,
        })
    }

    /// A table or attribute name: a quoted name or a bare word.
    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        let name = match self.peek() {
            Some(Tok::Quoted(q)) => q.clone(),
            Some(Tok::Word(w)) => w.clone(),
            _ => return Err(self.unexpected(what)),
        };
        self.pos += 1;
        Ok(name)
    }

    /// A top-level attribute name (a nested path is not implemented).
    fn attribute(&mut self) -> Result<String, ParseError> {
        let name = self.name("an attribute name")?;
        if self.is_sym(".") || self.is_sym("[") {
            return Err(unsupported(
                "nested document paths are not implemented (top-level attributes only)",
            ));
        }
        Ok(name)
    }

    /// `?`, `'text'` or a number (optionally negative).
    fn value(&mut self, what: &str) -> Result<Operand, ParseError> {
        let negative = self.is_sym("-") && matches!(self.peek_at(1), Some(Tok::Num(_)));
        if negative {
            self.pos += 1;
        }
        let operand = match self.peek().cloned() {
            Some(Tok::Param) => {
                let index = self.toks[..self.pos]
                    .iter()
                    .filter(|(t, _)| *t == Tok::Param)
                    .count();
                Operand::Param(index)
            }
            Some(Tok::Str(s)) => Operand::Lit(Value::S(s)),
            Some(Tok::Num(n)) => {
                let text = if negative { format!("-{n}") } else { n };
                match Number::parse(&text) {
                    Ok(n) => Operand::Lit(Value::N(n)),
                    Err(e) => return Err(ParseError::Refused(e.message)),
                }
            }
            Some(Tok::Sym(s)) if ["<<", "[", "{"].contains(&s.as_str()) => {
                return Err(unsupported(
                    "collection literals are not implemented (pass sets, lists and maps as ? parameters)",
                ));
            }
            Some(Tok::Word(w)) if is_literal_keyword(&w) => {
                return Err(unsupported(format!(
                    "the literal {} is not implemented (pass it as a ? parameter)",
                    w.to_ascii_uppercase()
                )));
            }
            _ => return Err(self.unexpected(what)),
        };
        self.pos += 1;
        Ok(operand)
    }

    fn assignment(&mut self) -> Result<(String, Rhs), ParseError> {
        let attr = self.attribute()?;
        if !self.eat_sym("=") {
            return Err(self.unexpected("="));
        }
        let rhs = match (self.peek().cloned(), self.peek_at(1)) {
            (Some(Tok::Word(f)), Some(Tok::Sym(paren))) if paren == "(" => {
                let upper = f.to_ascii_uppercase();
                if upper != "SET_ADD" && upper != "SET_DELETE" {
                    return Err(unsupported(format!(
                        "the function {f} is not implemented (only SET_ADD and SET_DELETE)"
                    )));
                }
                self.set_call(&attr, &upper)?
            }
            (Some(Tok::Word(w)), _) if is_literal_keyword(&w) => Rhs::Value(self.value("a value")?),
            (Some(Tok::Word(_) | Tok::Quoted(_)), _) => {
                return Err(unsupported(
                    "assigning another attribute's value is not implemented (only ? parameters and literals)",
                ));
            }
            _ => Rhs::Value(self.value("a value")?),
        };
        if self.is_sym("+") || self.is_sym("-") {
            return Err(unsupported("arithmetic in SET is not implemented"));
        }
        Ok((attr, rhs))
    }

    /// `SET_ADD(<attr>, <value>)` / `SET_DELETE(...)`, checked as DynamoDB checks it.
    fn set_call(&mut self, target: &str, name: &str) -> Result<Rhs, ParseError> {
        let call_at = self.pos_here().expect("the function name is here");
        self.pos += 2;
        // Each argument: where it starts, and the attribute it names or the value it is.
        let mut args: Vec<(Pos, Result<String, Operand>)> = Vec::new();
        if !self.eat_sym(")") {
            loop {
                let Some(at) = self.pos_here() else {
                    return Err(self.unexpected("an argument"));
                };
                let arg = match self.peek() {
                    Some(Tok::Quoted(_) | Tok::Word(_)) => Ok(self.attribute()?),
                    _ => Err(self.value("an argument")?),
                };
                args.push((at, arg));
                if self.eat_sym(",") {
                    continue;
                }
                if self.eat_sym(")") {
                    break;
                }
                return Err(self.unexpected("',' or ')'"));
            }
        }
        let delete = name == "SET_DELETE";
        let placeholder = Operand::Lit(Value::Null);
        match args.as_slice() {
            [(first_at, first), (_, second)] => {
                if first.as_deref() != Ok(target) {
                    self.refuse(format!(
                        "The first argument to {name} must equal the assignment value at {call_at}"
                    ));
                } else if !matches!(second, Err(Operand::Param(_))) {
                    // No set literal parses here, so any other value is not a set.
                    self.refuse(format!(
                        "The second argument to {name} must be a value with type SET at {first_at}"
                    ));
                }
                Ok(Rhs::SetCall {
                    delete,
                    members: second.clone().err().unwrap_or_else(|| placeholder.clone()),
                    first_at: *first_at,
                })
            }
            _ => {
                self.refuse(format!(
                    "{name} must have exactly two arguments at {call_at}"
                ));
                Ok(Rhs::SetCall {
                    delete,
                    members: placeholder,
                    first_at: call_at,
                })
            }
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(unsupported("the WHERE clause is nested too deeply"));
        }
        Ok(())
    }

    fn pred_or(&mut self) -> Result<Pred, ParseError> {
        self.left_assoc("OR", Self::pred_and, Pred::Or)
    }

    fn pred_and(&mut self) -> Result<Pred, ParseError> {
        self.left_assoc("AND", Self::pred_not, Pred::And)
    }

    /// `operand (keyword operand)*`, joined from the left.
    fn left_assoc(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Result<Pred, ParseError>,
        join: fn(Box<Pred>, Box<Pred>) -> Pred,
    ) -> Result<Pred, ParseError> {
        let mut left = operand(self)?;
        while self.eat_keyword(keyword) {
            let right = operand(self)?;
            left = join(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn pred_not(&mut self) -> Result<Pred, ParseError> {
        if self.eat_keyword("NOT") {
            self.enter()?;
            let inner = self.pred_not()?;
            self.depth -= 1;
            return Ok(Pred::Not(Box::new(inner)));
        }
        self.pred_primary()
    }

    fn pred_primary(&mut self) -> Result<Pred, ParseError> {
        if self.eat_sym("(") {
            self.enter()?;
            let inner = self.pred_or()?;
            self.depth -= 1;
            if !self.eat_sym(")") {
                return Err(self.unexpected("')'"));
            }
            return Ok(inner);
        }
        if let (Some(Tok::Word(f)), Some(Tok::Sym(paren))) = (self.peek(), self.peek_at(1))
            && paren == "("
        {
            return Err(unsupported(format!(
                "the function {f} is not implemented in WHERE"
            )));
        }
        let attr = self.attribute()?;
        if self.eat_keyword("IS") {
            let negated = self.eat_keyword("NOT");
            if !self.eat_keyword("MISSING") {
                return Err(unsupported(
                    "only IS MISSING and IS NOT MISSING are implemented after IS",
                ));
            }
            return Ok(Pred::Missing { attr, negated });
        }
        let op = match self.peek() {
            Some(Tok::Sym(s)) => match s.as_str() {
                "=" => CmpOp::Eq,
                "<>" | "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                ">=" => CmpOp::Ge,
                _ => return Err(self.unexpected("a comparison")),
            },
            Some(Tok::Word(w))
                if ["BETWEEN", "IN", "LIKE"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                return Err(unsupported(format!(
                    "{} is not implemented in WHERE",
                    w.to_ascii_uppercase()
                )));
            }
            _ => return Err(self.unexpected("a comparison or IS")),
        };
        self.pos += 1;
        let literal = matches!(self.peek(), Some(Tok::Word(w)) if is_literal_keyword(w));
        if matches!(self.peek(), Some(Tok::Word(_) | Tok::Quoted(_))) && !literal {
            return Err(unsupported(
                "comparing two attributes is not implemented (compare with a ? parameter or a literal)",
            ));
        }
        let value = self.value("a value")?;
        Ok(Pred::Cmp(attr, op, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_eq(a: &str, i: usize) -> Pred {
        Pred::Cmp(a.into(), CmpOp::Eq, Operand::Param(i))
    }

    #[test]
    fn the_client_shapes_parse() {
        let u = parse(r#"UPDATE "t" SET "m" = SET_ADD("m", ?) WHERE "pk" = ?"#).unwrap();
        assert_eq!(u.table, "t");
        assert_eq!(u.placeholders, 2);
        assert_eq!(
            u.sets,
            vec![(
                "m".into(),
                Rhs::SetCall {
                    delete: false,
                    members: Operand::Param(0),
                    first_at: Pos {
                        line: 1,
                        col: 30,
                        len: 3
                    },
                }
            )]
        );
        assert_eq!(u.predicate, Some(attr_eq("pk", 1)));

        let u = parse(r#"update "t" set "m" = set_delete("m", ?) where "pk" = ?;"#).unwrap();
        assert!(matches!(u.sets[0].1, Rhs::SetCall { delete: true, .. }));

        let u = parse(
            r#"UPDATE "t" SET "a1" = ?, "a2" = ? WHERE "pk" = ? AND "sk" = ? AND "g" = ? AND ("n" < ? OR "n" IS MISSING)"#,
        )
        .unwrap();
        assert_eq!(u.placeholders, 6);
        let conj = u.predicate.as_ref().unwrap().conjuncts();
        assert_eq!(conj.len(), 4);
        assert_eq!(*conj[0], attr_eq("pk", 2));
        assert_eq!(*conj[2], attr_eq("g", 4));
        assert_eq!(
            *conj[3],
            Pred::Or(
                Box::new(Pred::Cmp("n".into(), CmpOp::Lt, Operand::Param(5))),
                Box::new(Pred::Missing {
                    attr: "n".into(),
                    negated: false
                })
            )
        );
    }

    #[test]
    fn literals_and_quotes() {
        let u = parse("UPDATE t SET \"a\"\"b\" = 'it''s', n = -1.5e2 WHERE pk = 'k' AND x IS NOT MISSING AND y <> 3").unwrap();
        assert_eq!(u.sets[0].0, "a\"b");
        assert_eq!(
            u.sets[0].1,
            Rhs::Value(Operand::Lit(Value::S("it's".into())))
        );
        assert_eq!(
            u.sets[1].1,
            Rhs::Value(Operand::Lit(Value::N(Number::parse("-150").unwrap())))
        );
        assert_eq!(u.placeholders, 0);
    }

    #[test]
    fn refusals_in_dynamodb_words() {
        let msg = |t: &str| parse(t).unwrap_err().message();
        assert_eq!(
            msg(r#"UPDATE "t" SET "m" = SET_ADD("x", ?) WHERE "pk" = ?"#),
            "The first argument to SET_ADD must equal the assignment value at 1:22:7"
        );
        assert_eq!(
            msg(r#"UPDATE "t" SET "m" = SET_ADD("m", 'x') WHERE "pk" = ?"#),
            "The second argument to SET_ADD must be a value with type SET at 1:30:3"
        );
        assert_eq!(
            msg(r#"UPDATE "t" SET "m" = SET_DELETE("m") WHERE "pk" = ?"#),
            "SET_DELETE must have exactly two arguments at 1:22:10"
        );
        assert_eq!(
            msg(r#"UPDATE "t" SET "m" = ? WHERE "pk" = 'unterminated"#),
            "Statement wasn't well formed, can't be processed: Unterminated quoted string at 1:37"
        );
        assert_eq!(
            msg("   "),
            "Statement wasn't well formed, can't be processed: Empty statement"
        );
    }

    #[test]
    fn remove_clauses_mix_with_set_clauses() {
        let u = parse(r#"UPDATE "t" SET "a" = ? REMOVE "b" SET "c" = ? REMOVE d WHERE "pk" = ?"#)
            .unwrap();
        assert_eq!(
            u.sets.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(u.removes, ["b", "d"]);
        assert_eq!(u.placeholders, 3);
        let only = parse(r#"UPDATE "t" REMOVE "a" WHERE "pk" = ?"#).unwrap();
        assert!(only.sets.is_empty());
        assert_eq!(only.removes, ["a"]);
    }

    #[test]
    fn unsupported_shapes_say_so() {
        for text in [
            r#"SELECT * FROM "t" WHERE "pk" = ?"#,
            r#"DELETE FROM "t" WHERE "pk" = ?"#,
            r#"UPDATE "t" SET "a" = ? WHERE "pk" = ? RETURNING ALL NEW *"#,
            r#"UPDATE "t" SET "a"."b" = ? WHERE "pk" = ?"#,
            r#"UPDATE "t" SET "a" = "a" + ? WHERE "pk" = ?"#,
            r#"UPDATE "t" SET "a" = list_append("a", ?) WHERE "pk" = ?"#,
            r#"UPDATE "t" SET "a" = <<'x'>> WHERE "pk" = ?"#,
            r#"UPDATE "t" SET "a" = ? WHERE begins_with("pk", ?)"#,
            r#"UPDATE "t" SET "a" = ? WHERE "pk" IN [?, ?]"#,
            r#"UPDATE "t" SET "a" = ? WHERE "pk" = "sk""#,
            r#"UPDATE "t" SET "a" = ? WHERE "pk" = ? garbage"#,
            r#"UPDATE "t" SET "a" = ? WHERE"#,
            r#"UPDATE "t"."i" SET "a" = ? WHERE "pk" = ?"#,
            "hello",
        ] {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ParseError::Unsupported(_)), "{text}: {e:?}");
            assert!(
                e.message().starts_with("dynamo-sim implements only UPDATE"),
                "{text}"
            );
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(verb("select * from t"), Some(Verb::Read));
        assert_eq!(verb(" UPDATE t SET a = ?"), Some(Verb::Write));
        assert_eq!(verb("DELETE FROM t"), Some(Verb::Write));
        assert_eq!(verb("?"), None);
    }

    #[test]
    fn garbage_never_panics() {
        let deep = "(".repeat(200) + "a = ?" + &")".repeat(200);
        assert!(parse(&format!("UPDATE t SET a = ? WHERE {deep}")).is_err());
        let nots = "NOT ".repeat(200) + "a = ?";
        assert!(parse(&format!("UPDATE t SET a = ? WHERE {nots}")).is_err());
        for text in [
            "UPDATE",
            "UPDATE t",
            "UPDATE t SET",
            "UPDATE t SET a",
            "UPDATE t SET a =",
            "UPDATE t SET a = SET_ADD(",
            "UPDATE t SET a = SET_ADD(a,",
            "UPDATE t SET a = ? WHERE (",
            "UPDATE t SET a = ? WHERE a IS",
            "UPDATE t SET a = ? WHERE a IS NOT",
            "\"",
            "'",
            "-",
            "UPDATE t SET a = - WHERE",
            "UPDATE t SET a = 1e WHERE a = ?",
            "UPDATE t SET a = 99999999999999999999999999999999999999999 WHERE k = ?",
        ] {
            let _ = parse(text);
        }
    }
}

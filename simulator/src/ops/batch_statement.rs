//! BatchExecuteStatement, for the PartiQL `UPDATE`s and `INSERT`s of [`crate::partiql`].
//!
//! The request is checked first as a whole (any failure here answers 400 and runs nothing):
//! the members' constraints, then no mix of reads and writes, then no item named twice. Each
//! statement then fails or succeeds on its own, in order, answering in `Responses` with either
//! `TableName` or `Error: {Code, Message}`:
//!
//! - refused before its item is read (a parameter's value, the statement's text, its
//!   parameter count, an unknown table, its key): charged nothing;
//! - run under its shard's write lock like UpdateItem: read the item (a PartiQL UPDATE is not
//!   an upsert: a missing item fails the condition), evaluate the WHERE clause, apply the SETs,
//!   check the size, charge the larger of the old and new item to the token buckets, write.
//!   A failure after the read is charged what the write would have cost against the old item
//!   (one unit for a missing item), as DynamoDB charges the attempt; a failure that cannot be
//!   charged, and a write that cannot be, is `ThrottlingError` and changes nothing.
//! - an `INSERT` is checked like PutItem's item before it runs (the key present and of the
//!   table's types, the size); it runs under the same lock: an item already under its key fails
//!   it with `DuplicateItem` (charged like a failed condition), otherwise the item is written and
//!   charged its size.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value as Json, json};

use super::{MAX_ITEM_BYTES, Req, enum_violation, write_capacity};
use crate::capacity::write_units;
use crate::error::{ApiError, ThrottleKind};
use crate::expr::{CmpOp, Cond, Operand as CondOperand, Path, PathElem, SetValue, UpdateOperand};
use crate::partiql::{self, PARAMETER_COUNT_MISMATCH, Pred, Rhs, Verb};
use crate::state::Shared;
use crate::stats::add;
use crate::store::{KeyPart, Shard, StoreKey, Stored, Table};
use crate::value::{Item, Value, item_size, item_to_json};

/// At most 25 statements per request.
const MAX_STATEMENTS: usize = 25;

/// Statements are at most 8,192 characters (code points).
const MAX_STATEMENT_CHARS: usize = 8192;

/// The statements echoed in the "more than 25" refusal are cut after this many bytes (and end
/// `...`).
const ECHO_LIMIT: usize = 1024 * 1024;

/// One member of `Statements`, as sent.
struct Member<'a> {
    statement: Option<&'a str>,
    raw_parameters: Option<&'a Vec<Json>>,
    parameters: Vec<Value>,
    /// The first parameter refused for its value (an empty set, a bad number, too deep): the
    /// statement fails alone with it, and takes no part in the batch-wide checks.
    refusal: Option<String>,
    consistent_read: Option<bool>,
    return_old_on_failure: Option<&'a str>,
}

/// A per-statement error.
struct StatementError {
    code: &'static str,
    message: String,
    /// Echoed as the response's `TableName`.
    table: Option<String>,
    /// The item a failed condition was evaluated against (`ReturnValuesOnConditionCheckFailure`
    /// `ALL_OLD`).
    item: Option<Item>,
}

impl StatementError {
    fn validation(message: impl Into<String>) -> StatementError {
        StatementError {
            code: "ValidationError",
            message: message.into(),
            table: None,
            item: None,
        }
    }

    /// Echoing the table: DynamoDB does for a statement that ran and failed, and for the few
    /// refusals of a key that it makes once it knows the table.
    fn on(mut self, table: &str) -> StatementError {
        self.table = Some(table.to_owned());
        self
    }
}

/// A statement ready to run against its item.
struct Ready {
    table: Arc<Table>,
    key: StoreKey,
    /// The SETs as an update expression (SET_ADD is ADD and SET_DELETE is DELETE of a set).
    update: crate::expr::Update,
    /// The WHERE clause; the key equalities in it hold of the item by construction.
    cond: Cond,
    /// A SET_ADD/SET_DELETE parameter that is not a set: refused once the item has been read,
    /// where DynamoDB refuses it.
    late_refusal: Option<String>,
    return_old: bool,
    /// The item of an `INSERT` (`update` and `cond` are then empty).
    insert: Option<Item>,
}

/// A statement after the checks that need no item.
enum Prepared {
    Fail(StatementError),
    Ready(Box<Ready>),
}

/// What running one statement did.
enum Outcome {
    Applied {
        table: Arc<Table>,
        units: u64,
    },
    /// `charged` is the table and units the failure was charged (added to that table's
    /// total), if anything.
    Failed {
        error: StatementError,
        charged: Option<(Arc<Table>, u64)>,
    },
}

pub fn batch_execute_statement(sim: &Shared, req: &Req) -> Result<Json, ApiError> {
    let raw_statements = req
        .arr("Statements")?
        .ok_or_else(|| ApiError::missing("statements"))?;
    let capacity_mode = req.str("ReturnConsumedCapacity")?;
    let members = read_members(raw_statements)?;
    check_members(capacity_mode, &members)?;
    let wants_capacity = matches!(capacity_mode, Some("TOTAL" | "INDEXES"));

    // Everything that needs no item, once per statement, before anything runs.
    let prepared: Vec<Option<Prepared>> = members
        .iter()
        .map(|m| m.refusal.is_none().then(|| prepare(sim, m)))
        .collect();
    check_batch(&members, &prepared)?;

    let (throttle_rate, _) = sim.faults.batch_rates();
    let mut responses = Vec::with_capacity(members.len());
    let mut applied_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut throttled = 0u64;
    for (member, prepared) in members.iter().zip(prepared) {
        let outcome = match (&member.refusal, prepared) {
            (Some(refusal), _) => Outcome::Failed {
                error: StatementError::validation(refusal.clone()),
                charged: None,
            },
            (None, Some(Prepared::Fail(error))) => Outcome::Failed {
                error,
                charged: None,
            },
            (None, Some(Prepared::Ready(ready))) => {
                if sim.faults.roll(throttle_rate) {
                    Outcome::Failed {
                        error: throttling_error(ThrottleKind::Key, ready.table.name()),
                        charged: None,
                    }
                } else {
                    run(sim, &ready)
                }
            }
            (None, None) => unreachable!("every member without a refusal is prepared"),
        };
        responses.push(match outcome {
            Outcome::Applied { table, units } => {
                *applied_units.entry(table.name().to_owned()).or_default() += units;
                json!({ "TableName": table.name() })
            }
            Outcome::Failed { error, charged } => {
                if let Some((table, units)) = charged {
                    *failed_units.entry(table.name().to_owned()).or_default() += units;
                }
                if error.code == "ThrottlingError" {
                    throttled += 1;
                }
                error_response(error)
            }
        });
    }
    add(&sim.stats.throttled_items, throttled);

    let mut out = json!({ "Responses": responses });
    // Per table, failures included; absent when nothing at all succeeded, and a table none of
    // whose statements succeeded has no entry (as DynamoDB reports it).
    if wants_capacity && !applied_units.is_empty() {
        out["ConsumedCapacity"] = applied_units
            .iter()
            .map(|(table, units)| {
                write_capacity(table, units + failed_units.get(table).copied().unwrap_or(0))
            })
            .collect();
    }
    Ok(out)
}

fn error_response(error: StatementError) -> Json {
    let mut e = Map::new();
    e.insert("Code".into(), error.code.into());
    e.insert("Message".into(), error.message.into());
    if let Some(item) = &error.item {
        e.insert("Item".into(), item_to_json(item));
    }
    let mut out = Map::new();
    out.insert("Error".into(), Json::Object(e));
    if let Some(table) = error.table {
        out.insert("TableName".into(), table.into());
    }
    Json::Object(out)
}

/// The per-statement error of a statement that could not be charged: code `ThrottlingError`,
/// with the message of the exception a single UpdateItem would get.
fn throttling_error(kind: ThrottleKind, table: &str) -> StatementError {
    StatementError {
        code: "ThrottlingError",
        message: ApiError::throttled(vec![(kind, table.to_owned())]).message,
        table: Some(table.to_owned()),
        item: None,
    }
}

/// Reads `Statements`. A parameter that is not an AttributeValue at all fails the request
/// (SerializationException); one DynamoDB refuses for its value fails only its statement.
fn read_members(raw: &[Json]) -> Result<Vec<Member<'_>>, ApiError> {
    raw.iter()
        .map(|raw| {
            let r = Req(raw.as_object().ok_or_else(|| {
                ApiError::serialization(
                    "Unexpected value type in payload: a BatchStatementRequest must be a JSON object",
                )
            })?);
            let raw_parameters = r.arr("Parameters")?;
            let mut parameters = Vec::new();
            let mut refusal = None;
            for p in raw_parameters.into_iter().flatten() {
                match Value::from_json(p) {
                    Ok(v) => parameters.push(v),
                    Err(e) if e.code == "ValidationException" => {
                        refusal.get_or_insert(e.message);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Member {
                statement: r.str("Statement")?,
                raw_parameters,
                parameters,
                refusal,
                consistent_read: r.bool("ConsistentRead")?,
                return_old_on_failure: r.str("ReturnValuesOnConditionCheckFailure")?,
            })
        })
        .collect()
}

/// The members' constraints, every violation listed in one ValidationException as DynamoDB
/// lists them: `ReturnConsumedCapacity`, the list's length, then each member's
/// `ReturnValuesOnConditionCheckFailure`, `Statement` and `Parameters`.
fn check_members(capacity_mode: Option<&str>, members: &[Member]) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    if let Some(mode) = capacity_mode
        && !["INDEXES", "TOTAL", "NONE"].contains(&mode)
    {
        violations.push(enum_violation(
            "returnConsumedCapacity",
            mode,
            "[INDEXES, TOTAL, NONE]",
        ));
    }
    if members.is_empty() {
        violations.push(
            "Value '[]' at 'statements' failed to satisfy constraint: Member must have length greater than or equal to 1"
                .to_owned(),
        );
    }
    if members.len() > MAX_STATEMENTS {
        violations.push(format!(
            "Value '{}' at 'statements' failed to satisfy constraint: Member must have length less than or equal to {MAX_STATEMENTS}",
            statements_echo(members)
        ));
    }
    for (i, m) in members.iter().enumerate() {
        let path = format!("statements.{}.member", i + 1);
        if let Some(mode) = m.return_old_on_failure
            && !["ALL_OLD", "NONE"].contains(&mode)
        {
            violations.push(enum_violation(
                &format!("{path}.returnValuesOnConditionCheckFailure"),
                mode,
                "[ALL_OLD, NONE]",
            ));
        }
        match m.statement {
            None => violations.push(format!(
                "Value null at '{path}.statement' failed to satisfy constraint: Member must not be null"
            )),
            Some(s) => {
                let constraint = match s.chars().count() {
                    0 => Some("Member must have length greater than or equal to 1".to_owned()),
                    n if n > MAX_STATEMENT_CHARS => Some(format!(
                        "Member must have length less than or equal to {MAX_STATEMENT_CHARS}"
                    )),
                    _ => None,
                };
                if let Some(c) = constraint {
                    violations.push(format!(
                        "Value '{s}' at '{path}.statement' failed to satisfy constraint: {c}"
                    ));
                }
            }
        }
        if m.raw_parameters.is_some_and(|p| p.is_empty()) {
            violations.push(format!(
                "Value '[]' at '{path}.parameters' failed to satisfy constraint: Member must have length greater than or equal to 1"
            ));
        }
    }
    match violations.as_slice() {
        [] => Ok(()),
        [one] => Err(ApiError::validation(format!(
            "1 validation error detected: {one}"
        ))),
        many => Err(ApiError::validation(format!(
            "{} validation errors detected: {}",
            many.len(),
            many.join("; ")
        ))),
    }
}

/// The batch-wide refusals, among the statements not refused for a parameter: reads and
/// writes together (by each statement's first keyword), then an item named twice.
fn check_batch(members: &[Member], prepared: &[Option<Prepared>]) -> Result<(), ApiError> {
    let verbs: HashSet<Verb> = members
        .iter()
        .filter(|m| m.refusal.is_none())
        .filter_map(|m| m.statement.and_then(partiql::verb))
        .collect();
    if verbs.len() > 1 {
        return Err(ApiError::validation(
            "Read and write requests together in the same batch is not supported.",
        ));
    }
    let mut seen = HashSet::new();
    for p in prepared.iter().flatten() {
        let target = match p {
            Prepared::Ready(r) => Some((r.table.name(), &r.key)),
            Prepared::Fail(_) => None,
        };
        if let Some(target) = target
            && !seen.insert(target)
        {
            return Err(ApiError::validation(
                "Provided list of item keys contains duplicates",
            ));
        }
    }
    Ok(())
}

/// The checks of one statement that need no item, in DynamoDB's order: the text, the
/// parameter count, the WHERE operands, the table, the key, the SET targets.
fn prepare(sim: &Shared, member: &Member) -> Prepared {
    match prepare_inner(sim, member) {
        Ok(ready) => Prepared::Ready(Box::new(ready)),
        Err(error) => Prepared::Fail(error),
    }
}

fn prepare_inner(sim: &Shared, member: &Member) -> Result<Ready, StatementError> {
    let text = member.statement.unwrap_or_default();
    let stmt =
        partiql::parse_statement(text).map_err(|e| StatementError::validation(e.message()))?;
    let stmt = match stmt {
        partiql::Statement::Update(u) => u,
        partiql::Statement::Insert(insert) => {
            return prepare_insert(sim, &insert, &member.parameters);
        }
    };
    let params = &member.parameters;
    if stmt.placeholders > params.len() {
        return Err(StatementError::validation(PARAMETER_COUNT_MISMATCH));
    }
    if let Some(pred) = &stmt.predicate {
        for (_, op, value) in pred.comparisons() {
            let value = value.bind(params);
            if !matches!(op, CmpOp::Eq | CmpOp::Ne)
                && !matches!(value, Value::S(_) | Value::N(_) | Value::B(_))
            {
                return Err(StatementError::validation(format!(
                    "Incorrect operand type for operator or function; operator or function: {}, operand type: {}",
                    op.symbol(),
                    value.type_name()
                )));
            }
        }
    }
    let table = sim.store.get(&stmt.table).ok_or_else(|| StatementError {
        code: "ResourceNotFound",
        message: "Requested resource not found".into(),
        table: Some(stmt.table.clone()),
        item: None,
    })?;
    let name = table.name();
    let pred = stmt.predicate.as_ref().ok_or_else(mandatory_key_equality)?;
    let key = pinned_key(&table, pred, params)?;
    for attr in stmt.sets.iter().map(|(a, _)| a).chain(&stmt.removes) {
        if table.schema.is_key_attr(attr) {
            return Err(StatementError::validation(format!(
                "One or more parameter values were invalid: Cannot update attribute {attr}. This attribute is part of the key"
            ))
            .on(name));
        }
    }
    let paths: Vec<&String> = stmt
        .sets
        .iter()
        .map(|(a, _)| a)
        .chain(&stmt.removes)
        .collect();
    for (i, later) in paths.iter().enumerate().rev() {
        if paths[..i].iter().any(|earlier| earlier == later) {
            return Err(StatementError::validation(format!(
                "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [{later}], path two: [{later}]"
            )));
        }
    }

    let mut update = crate::expr::Update::default();
    let mut late_refusal = None;
    for (attr, rhs) in &stmt.sets {
        let path = Path(vec![PathElem::Attr(attr.clone())]);
        match rhs {
            Rhs::Value(v) => update.set.push((
                path,
                SetValue::Operand(UpdateOperand::Value(v.bind(params).clone())),
            )),
            Rhs::SetCall {
                delete,
                members,
                first_at,
            } => {
                let members = members.bind(params).clone();
                if !matches!(members, Value::Ss(_) | Value::Ns(_) | Value::Bs(_)) {
                    let function = if *delete { "SET_DELETE" } else { "SET_ADD" };
                    late_refusal.get_or_insert(format!(
                        "The second argument to {function} must be a value with type SET at {first_at}"
                    ));
                }
                if *delete {
                    update.delete.push((path, members));
                } else {
                    update.add.push((path, members));
                }
            }
        }
    }
    for attr in &stmt.removes {
        update.remove.push(Path(vec![PathElem::Attr(attr.clone())]));
    }
    Ok(Ready {
        key,
        update,
        cond: condition(pred, params),
        late_refusal,
        return_old: member.return_old_on_failure == Some("ALL_OLD"),
        table,
        insert: None,
    })
}

/// An `INSERT`'s checks that need no item, with PartiQL's and PutItem's messages: the
/// parameter count, the table, the key (present, of the table's types and within its size
/// limits), the item's size.
fn prepare_insert(
    sim: &Shared,
    insert: &partiql::Insert,
    params: &[Value],
) -> Result<Ready, StatementError> {
    if insert.placeholders > params.len() {
        return Err(StatementError::validation(PARAMETER_COUNT_MISMATCH));
    }
    let table = sim.store.get(&insert.table).ok_or_else(|| StatementError {
        code: "ResourceNotFound",
        message: "Requested resource not found".into(),
        table: Some(insert.table.clone()),
        item: None,
    })?;
    let item: Item = insert
        .fields
        .iter()
        .map(|(name, value)| (name.clone(), value.bind(params).clone()))
        .collect();
    let schema = &table.schema;
    let mut key = Item::new();
    for attr in std::iter::once(&schema.hash).chain(schema.range.as_ref()) {
        let Some(value) = item.get(&attr.name) else {
            return Err(StatementError::validation(format!(
                "One or more parameter values were invalid: Missing the key {} in the item",
                attr.name
            )));
        };
        if KeyPart::of(value, attr.ty).is_none() {
            return Err(StatementError::validation(format!(
                "Key attribute's data type should match its data type in table's schema: Key {}",
                attr.name
            )));
        }
        key.insert(attr.name.clone(), value.clone());
    }
    let key = schema
        .key_of_key(&key)
        .map_err(|e| StatementError::validation(e.message).on(table.name()))?;
    if item_size(&item) > MAX_ITEM_BYTES {
        return Err(StatementError::validation(
            "Item size has exceeded the maximum allowed size",
        ));
    }
    // Never evaluated: an INSERT's only condition is that its key holds no item.
    let key_path = || Path(vec![PathElem::Attr(schema.hash.name.clone())]);
    let cond = Cond::Or(
        Box::new(Cond::Exists(key_path())),
        Box::new(Cond::NotExists(key_path())),
    );
    Ok(Ready {
        table,
        key,
        update: crate::expr::Update::default(),
        cond,
        late_refusal: None,
        return_old: false,
        insert: Some(item),
    })
}

fn mandatory_key_equality() -> StatementError {
    StatementError::validation(
        "Where clause does not contain a mandatory equality on all key attributes",
    )
}

/// The item the statement addresses: each key attribute pinned by an `=` among the WHERE
/// clause's top-level `AND`s (one named only under an `OR` or a `NOT` is not pinned), with a
/// value of the key's type, and the same value if it is pinned twice.
fn pinned_key(table: &Table, pred: &Pred, params: &[Value]) -> Result<StoreKey, StatementError> {
    let schema = &table.schema;
    let conjuncts = pred.conjuncts();
    let mut key = Item::new();
    for attr in std::iter::once(&schema.hash).chain(schema.range.as_ref()) {
        let mut pinned: Option<&Value> = None;
        for c in &conjuncts {
            let Pred::Cmp(name, CmpOp::Eq, value) = c else {
                continue;
            };
            if *name != attr.name {
                continue;
            }
            let value = value.bind(params);
            if !matches!(value, Value::S(_) | Value::N(_) | Value::B(_)) {
                return Err(StatementError::validation(format!(
                    "Key value must be of type S, N, or B. Key name: {name}, Key type: {}",
                    value.type_name()
                )));
            }
            if KeyPart::of(value, attr.ty).is_none() {
                return Err(StatementError::validation(format!(
                    "Key attribute's data type should match its data type in table's schema: Key {name}"
                )));
            }
            match pinned {
                Some(already) if already != value => {
                    return Err(StatementError::validation(format!(
                        "Multiple conditions on same key {name}. Only single item Update/Insert/Delete are supported"
                    )));
                }
                _ => pinned = Some(value),
            }
        }
        let value = pinned.ok_or_else(mandatory_key_equality)?;
        key.insert(attr.name.clone(), value.clone());
    }
    // The key's size (and emptiness) rules, with UpdateItem's messages.
    schema
        .key_of_key(&key)
        .map_err(|e| StatementError::validation(e.message).on(table.name()))
}

/// The WHERE clause as a condition expression.
fn condition(pred: &Pred, params: &[Value]) -> Cond {
    let path = |attr: &str| Path(vec![PathElem::Attr(attr.to_owned())]);
    match pred {
        Pred::Or(a, b) => Cond::Or(
            Box::new(condition(a, params)),
            Box::new(condition(b, params)),
        ),
        Pred::And(a, b) => Cond::And(
            Box::new(condition(a, params)),
            Box::new(condition(b, params)),
        ),
        Pred::Not(a) => Cond::Not(Box::new(condition(a, params))),
        Pred::Cmp(attr, op, value) => Cond::Cmp(
            CondOperand::Path(path(attr)),
            *op,
            CondOperand::Value(value.bind(params).clone()),
        ),
        Pred::Missing {
            attr,
            negated: false,
        } => Cond::NotExists(path(attr)),
        Pred::Missing {
            attr,
            negated: true,
        } => Cond::Exists(path(attr)),
    }
}

/// Runs one prepared `INSERT` (see the module documentation).
fn run_insert(sim: &Shared, ready: &Ready, item: &Item) -> Outcome {
    let table = &ready.table;
    let name = table.name();
    let mut shard = table.write_shard(ready.key.shard());
    if let Some(old) = shard.items().get(&ready.key) {
        let old_size = old.size;
        let error = StatementError {
            code: "DuplicateItem",
            message: "Duplicate primary key exists in table".into(),
            table: Some(name.to_owned()),
            item: None,
        };
        return charge_failure(sim, table, &mut shard, &ready.key, old_size, error);
    }
    let size = item_size(item);
    charge_and_write(sim, ready, shard, item.clone(), size, write_units(size))
}

/// Charges `units` to the statement's partition key and writes `item` (of `size` bytes) under
/// its key, or fails it as throttled, changing nothing.
fn charge_and_write(
    sim: &Shared,
    ready: &Ready,
    mut shard: std::sync::RwLockWriteGuard<'_, Shard>,
    item: Item,
    size: usize,
    units: u64,
) -> Outcome {
    let table = &ready.table;
    if let Err(kind) = table.try_charge(
        &mut shard,
        &ready.key.pk,
        units,
        &sim.limits(),
        Instant::now(),
    ) {
        return Outcome::Failed {
            error: throttling_error(kind, table.name()),
            charged: None,
        };
    }
    shard.put(ready.key.clone(), Stored { item, size });
    drop(shard);
    add(&sim.stats.write_units, units);
    add(&sim.stats.items_written, 1);
    Outcome::Applied {
        table: table.clone(),
        units,
    }
}

/// Runs one prepared statement against its item (see the module documentation).
fn run(sim: &Shared, ready: &Ready) -> Outcome {
    if let Some(item) = &ready.insert {
        return run_insert(sim, ready, item);
    }
    let table = &ready.table;
    let name = table.name();
    let mut shard = table.write_shard(ready.key.shard());
    let old = shard.items().get(&ready.key).cloned();
    let old_size = old.as_ref().map_or(0, |s| s.size);
    let fail = |shard: &mut Shard, error: StatementError| {
        charge_failure(sim, table, shard, &ready.key, old_size, error)
    };

    // Not an upsert: a missing item fails the condition and creates nothing.
    let Some(old) = old else {
        return fail(&mut shard, conditional_failed(name, None));
    };
    if !ready.cond.eval(&old.item) {
        let item = ready.return_old.then(|| old.item.clone());
        return fail(&mut shard, conditional_failed(name, item));
    }
    if let Some(refusal) = &ready.late_refusal {
        return fail(&mut shard, StatementError::validation(refusal.clone()));
    }
    let mut new = old.item.clone();
    if let Err(e) = ready.update.apply(&mut new) {
        return fail(&mut shard, StatementError::validation(e.message));
    }
    let new_size = item_size(&new);
    if new_size > MAX_ITEM_BYTES {
        return fail(
            &mut shard,
            StatementError::validation("Item size to update has exceeded the maximum allowed size"),
        );
    }
    let units = write_units(new_size.max(old_size));
    charge_and_write(sim, ready, shard, new, new_size, units)
}

fn conditional_failed(table: &str, item: Option<Item>) -> StatementError {
    StatementError {
        code: "ConditionalCheckFailed",
        message: "The conditional request failed".into(),
        table: Some(table.to_owned()),
        item,
    }
}

/// Charges a statement that failed after its item was read what the write would have cost
/// against the old item. A failed condition that cannot be charged is throttled instead, as
/// UpdateItem's is; a refused update that cannot be charged keeps its refusal, uncharged.
fn charge_failure(
    sim: &Shared,
    table: &Arc<Table>,
    shard: &mut Shard,
    key: &StoreKey,
    old_size: usize,
    error: StatementError,
) -> Outcome {
    let units = write_units(old_size);
    match table.try_charge(shard, &key.pk, units, &sim.limits(), Instant::now()) {
        Ok(()) => {
            add(&sim.stats.write_units, units);
            Outcome::Failed {
                error,
                charged: Some((table.clone(), units)),
            }
        }
        Err(kind) if matches!(error.code, "ConditionalCheckFailed" | "DuplicateItem") => {
            Outcome::Failed {
                error: throttling_error(kind, table.name()),
                charged: None,
            }
        }
        Err(_) => Outcome::Failed {
            error,
            charged: None,
        },
    }
}

/// `[BatchStatementRequest(statement=..., parameters=[...], consistentRead=..., ...), ...]`, the
/// Java `toString` DynamoDB echoes, cut after [`ECHO_LIMIT`] bytes.
fn statements_echo(members: &[Member]) -> String {
    let mut out = BoundedEcho::default();
    let _ = write_statements(&mut out, members);
    out.finish()
}

fn write_statements(out: &mut BoundedEcho, members: &[Member]) -> std::fmt::Result {
    out.write_str("[")?;
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.write_str(", ")?;
        }
        write!(
            out,
            "BatchStatementRequest(statement={}, parameters=",
            m.statement.unwrap_or("null")
        )?;
        match m.raw_parameters {
            Some(params) => {
                out.write_str("[")?;
                for (j, p) in params.iter().enumerate() {
                    if j > 0 {
                        out.write_str(", ")?;
                    }
                    write_java_value(out, p)?;
                }
                out.write_str("]")?;
            }
            None => out.write_str("null")?,
        }
        match m.consistent_read {
            Some(c) => write!(out, ", consistentRead={c}")?,
            None => out.write_str(", consistentRead=null")?,
        }
        write!(
            out,
            ", returnValuesOnConditionCheckFailure={})",
            m.return_old_on_failure.unwrap_or("null")
        )?;
    }
    out.write_str("]")
}

/// An AttributeValue as the Java model prints it: every field, `null` but the one set. Strings
/// and numbers as sent, binaries as the byte buffer's summary, maps in key order.
fn write_java_value(out: &mut BoundedEcho, json: &Json) -> std::fmt::Result {
    const FIELDS: [(&str, &str); 16] = [
        ("s", "S"),
        ("n", "N"),
        ("b", "B"),
        ("iNT", ""),
        ("dECIMAL", ""),
        ("dOUBLE", ""),
        ("sS", "SS"),
        ("nS", "NS"),
        ("bS", "BS"),
        ("iNTSET", ""),
        ("dECIMALSET", ""),
        ("dOUBLESET", ""),
        ("m", "M"),
        ("l", "L"),
        ("nULL", "NULL"),
        ("bOOL", "BOOL"),
    ];
    let map = json.as_object();
    let set = map.and_then(|m| {
        FIELDS
            .iter()
            .find(|(_, tag)| !tag.is_empty() && m.contains_key(*tag))
            .map(|(_, tag)| *tag)
    });
    out.write_str("AttributeValue(")?;
    for (i, (field, tag)) in FIELDS.iter().enumerate() {
        if i > 0 {
            out.write_str(", ")?;
        }
        write!(out, "{field}=")?;
        match (set, map) {
            (Some(s), Some(m)) if s == *tag => write_java_shown(out, tag, &m[*tag])?,
            _ => out.write_str("null")?,
        }
    }
    out.write_str(")")
}

fn write_java_shown(out: &mut BoundedEcho, tag: &str, inner: &Json) -> std::fmt::Result {
    let buffer = |out: &mut BoundedEcho, b64: &Json| {
        let len = match Value::from_json(&json!({ "B": b64 })) {
            Ok(Value::B(b)) => b.len(),
            _ => 0,
        };
        write!(out, "java.nio.HeapByteBuffer[pos=0 lim={len} cap={len}]")
    };
    let list = |out: &mut BoundedEcho,
                each: &dyn Fn(&mut BoundedEcho, &Json) -> std::fmt::Result|
     -> std::fmt::Result {
        out.write_str("[")?;
        for (i, e) in inner.as_array().into_iter().flatten().enumerate() {
            if i > 0 {
                out.write_str(", ")?;
            }
            each(out, e)?;
        }
        out.write_str("]")
    };
    match tag {
        "S" | "N" => out.write_str(inner.as_str().unwrap_or_default()),
        "B" => buffer(out, inner),
        "SS" | "NS" => list(out, &|out, e| out.write_str(e.as_str().unwrap_or_default())),
        "BS" => list(out, &|out, e| buffer(out, e)),
        "L" => list(out, &|out, e| write_java_value(out, e)),
        "M" => {
            out.write_str("{")?;
            for (i, (k, v)) in inner.as_object().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.write_str(", ")?;
                }
                write!(out, "{k}=")?;
                write_java_value(out, v)?;
            }
            out.write_str("}")
        }
        _ => write!(out, "{inner}"),
    }
}

/// A string that takes writes up to [`ECHO_LIMIT`] bytes and then refuses them, so an echo of
/// a huge request stops being built as soon as it is full.
#[derive(Default)]
struct BoundedEcho {
    text: String,
    full: bool,
}

impl BoundedEcho {
    fn finish(mut self) -> String {
        if self.full {
            self.text.push_str("...");
        }
        self.text
    }
}

impl std::fmt::Write for BoundedEcho {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.full {
            return Err(std::fmt::Error);
        }
        let room = ECHO_LIMIT - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.full = true;
        Err(std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_bounded() {
        let mut e = BoundedEcho::default();
        let chunk = "é".repeat(1000);
        while e.write_str(&chunk).is_ok() {}
        let text = e.finish();
        assert!(text.ends_with("..."));
        assert!(text.len() <= ECHO_LIMIT + 3);
    }

    #[test]
    fn java_echo_of_parameters() {
        let params = vec![json!({"SS": ["b", "a"]}), json!({"S": "k"})];
        let members = [Member {
            statement: Some("UPDATE t SET a = ? WHERE k = ?"),
            raw_parameters: Some(&params),
            parameters: Vec::new(),
            refusal: None,
            consistent_read: None,
            return_old_on_failure: None,
        }];
        assert_eq!(
            statements_echo(&members),
            "[BatchStatementRequest(statement=UPDATE t SET a = ? WHERE k = ?, parameters=[\
             AttributeValue(s=null, n=null, b=null, iNT=null, dECIMAL=null, dOUBLE=null, sS=[b, a], nS=null, bS=null, iNTSET=null, dECIMALSET=null, dOUBLESET=null, m=null, l=null, nULL=null, bOOL=null), \
             AttributeValue(s=k, n=null, b=null, iNT=null, dECIMAL=null, dOUBLE=null, sS=null, nS=null, bS=null, iNTSET=null, dECIMALSET=null, dOUBLESET=null, m=null, l=null, nULL=null, bOOL=null)], \
             consistentRead=null, returnValuesOnConditionCheckFailure=null)]"
        );
    }
}

//! The DynamoDB operations: request parsing and validation shared by all of them, and dispatch
//! to [`tables`] (control plane), [`write`], [`batch_statement`] (PartiQL) and [`read`].

mod batch_statement;
mod read;
mod tables;
mod write;

use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use crate::error::ApiError;
use crate::expr::{ExprContext, ExprKind, Path};
use crate::state::Shared;
use crate::store::{StoreKey, Table};
use crate::value::{Item, parse_item};

/// Items are at most 400 KB (409,600 bytes by the item-size rule).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Declares [`Op`] (one variant per operation, plus `Unknown`), `Op::ALL`, `Op::name` and
/// [`dispatch`] from one list of operations and their handlers.
macro_rules! operations {
    ($($op:ident => $handler:path),* $(,)?) => {
        /// The operations the simulator implements, plus `Unknown` for everything else.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op {
            $($op,)*
            Unknown,
        }

        impl Op {
            pub const ALL: [Op; [$(stringify!($op)),*].len() + 1] = [$(Op::$op,)* Op::Unknown];

            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$op => stringify!($op),)*
                    Op::Unknown => "Unknown",
                }
            }
        }

        /// Runs one operation on a parsed request body.
        pub fn dispatch(sim: &Shared, op: Op, body: &Map<String, Json>) -> Result<Json, ApiError> {
            let req = Req(body);
            match op {
                $(Op::$op => $handler(sim, &req),)*
                Op::Unknown => Err(ApiError::unknown_operation(
                    "The operation is not known to dynamo-sim",
                )),
            }
        }
    };
}

operations! {
    CreateTable => tables::create_table,
    DescribeTable => tables::describe_table,
    ListTables => tables::list_tables,
    DeleteTable => tables::delete_table,
    PutItem => write::put_item,
    GetItem => read::get_item,
    DeleteItem => write::delete_item,
    UpdateItem => write::update_item,
    BatchWriteItem => write::batch_write_item,
    BatchGetItem => read::batch_get_item,
    Query => read::query,
    Scan => read::scan,
    BatchExecuteStatement => batch_statement::batch_execute_statement,
}

impl Op {
    /// A data-plane write (the operations `apply_then_error_rate` and `apply_late_rate` apply to).
    /// BatchExecuteStatement counts as one: the simulator runs only its write statements.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Op::PutItem
                | Op::DeleteItem
                | Op::UpdateItem
                | Op::BatchWriteItem
                | Op::BatchExecuteStatement
        )
    }

    /// From `X-Amz-Target: DynamoDB_20120810.<Op>`.
    pub fn from_target(target: Option<&str>) -> Op {
        target
            .and_then(|t| t.strip_prefix("DynamoDB_20120810."))
            .and_then(|name| Op::ALL.into_iter().find(|op| op.name() == name))
            .filter(|op| *op != Op::Unknown)
            .unwrap_or(Op::Unknown)
    }
}

/// Typed access to a JSON object. A member of the wrong JSON type is a SerializationException,
/// as in DynamoDB; `null` counts as absent.
#[derive(Clone, Copy)]
pub struct Req<'a>(pub &'a Map<String, Json>);

fn wrong_type(member: &str, expected: &str) -> ApiError {
    ApiError::serialization(format!(
        "Unexpected value type in payload: {member} must be {expected}"
    ))
}

impl<'a> Req<'a> {
    pub fn get(&self, member: &str) -> Option<&'a Json> {
        self.0.get(member).filter(|v| !v.is_null())
    }

    pub fn str(&self, member: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(member)
            .map(|v| v.as_str().ok_or_else(|| wrong_type(member, "a string")))
            .transpose()
    }

    pub fn obj(&self, member: &str) -> Result<Option<&'a Map<String, Json>>, ApiError> {
        self.get(member)
            .map(|v| v.as_object().ok_or_else(|| wrong_type(member, "an object")))
            .transpose()
    }

    pub fn arr(&self, member: &str) -> Result<Option<&'a Vec<Json>>, ApiError> {
        self.get(member)
            .map(|v| v.as_array().ok_or_else(|| wrong_type(member, "an array")))
            .transpose()
    }

    pub fn bool(&self, member: &str) -> Result<Option<bool>, ApiError> {
        self.get(member)
            .map(|v| v.as_bool().ok_or_else(|| wrong_type(member, "a boolean")))
            .transpose()
    }

    pub fn int(&self, member: &str) -> Result<Option<i64>, ApiError> {
        self.get(member)
            .map(|v| v.as_i64().ok_or_else(|| wrong_type(member, "an integer")))
            .transpose()
    }

    /// Rejects the pre-expression parameters the simulator does not implement.
    pub fn reject_legacy(&self) -> Result<(), ApiError> {
        for legacy in [
            "Expected",
            "AttributeUpdates",
            "KeyConditions",
            "QueryFilter",
            "ScanFilter",
            "AttributesToGet",
            "ConditionalOperator",
        ] {
            if self.get(legacy).is_some() {
                return Err(ApiError::validation(format!(
                    "dynamo-sim does not implement the legacy parameter {legacy}; use expressions"
                )));
            }
        }
        if self.get("IndexName").is_some() {
            return Err(ApiError::validation(
                "dynamo-sim does not implement secondary indexes",
            ));
        }
        Ok(())
    }

    /// `RequestItems` of a batch, which must not be empty.
    pub fn request_items(&self) -> Result<&'a Map<String, Json>, ApiError> {
        let items = self
            .obj("RequestItems")?
            .ok_or_else(|| ApiError::missing("requestItems"))?;
        if items.is_empty() {
            return Err(ApiError::validation(
                "1 validation error detected: Value '{}' at 'requestItems' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        Ok(items)
    }

    /// A string member that must be present (`path` names it in the error).
    pub fn required_str(&self, member: &str, path: &str) -> Result<&'a str, ApiError> {
        self.str(member)?.ok_or_else(|| ApiError::missing(path))
    }

    /// `TableName`, validated like DynamoDB does.
    pub fn table_name(&self) -> Result<&'a str, ApiError> {
        let name = self.required_str("TableName", "tableName")?;
        check_table_name(name)?;
        Ok(name)
    }

    /// The table named by `TableName`.
    pub fn table(&self, sim: &Shared) -> Result<Arc<Table>, ApiError> {
        let name = self.table_name()?;
        sim.store.get(name).ok_or_else(ApiError::not_found)
    }

    /// The expression context from `ExpressionAttributeNames` / `ExpressionAttributeValues`.
    pub fn expr_context(&self) -> Result<ExprContext, ApiError> {
        ExprContext::new(
            self.get("ExpressionAttributeNames"),
            self.get("ExpressionAttributeValues"),
        )
    }

    pub fn projection(&self, ctx: &mut ExprContext) -> Result<Option<Vec<Path>>, ApiError> {
        self.str("ProjectionExpression")?
            .map(|p| ctx.projection(p))
            .transpose()
    }

    pub fn condition(
        &self,
        ctx: &mut ExprContext,
        member: &str,
        kind: ExprKind,
    ) -> Result<Option<crate::expr::Cond>, ApiError> {
        self.str(member)?
            .map(|c| ctx.condition(c, kind))
            .transpose()
    }

    /// `Key`, checked against the table's schema.
    pub fn key(&self, table: &Table) -> Result<StoreKey, ApiError> {
        let key = self.get("Key").ok_or_else(|| ApiError::missing("key"))?;
        table.schema.key_of_key(&parse_item(key)?)
    }

    /// Whether `ReturnConsumedCapacity` asks for consumed capacity.
    pub fn wants_capacity(&self) -> Result<bool, ApiError> {
        match self.str("ReturnConsumedCapacity")? {
            None | Some("NONE") => Ok(false),
            Some("TOTAL" | "INDEXES") => Ok(true),
            Some(other) => Err(enum_error(
                "returnConsumedCapacity",
                other,
                "[INDEXES, TOTAL, NONE]",
            )),
        }
    }

    /// `ReturnValues`, one of `allowed`.
    pub fn return_values(&self, allowed: &[&str]) -> Result<&'a str, ApiError> {
        match self.str("ReturnValues")? {
            None => Ok("NONE"),
            Some(v) if allowed.contains(&v) => Ok(v),
            Some(_) => Err(ApiError::validation("Return values set to invalid value")),
        }
    }
}

/// Counts the requests of a batch's `RequestItems` and checks the total against `max` (`op`
/// names the operation in the error); `list` returns one table's requests (or fails).
pub fn count_batch<'a>(
    request_items: &'a Map<String, Json>,
    max: usize,
    op: &str,
    list: impl Fn(&str, &'a Json) -> Result<&'a Vec<Json>, ApiError>,
) -> Result<usize, ApiError> {
    let mut total = 0;
    for (name, requests) in request_items {
        total += list(name, requests)?.len();
    }
    if total > max {
        return Err(ApiError::validation(format!(
            "Too many items requested for the {op} call"
        )));
    }
    Ok(total)
}

pub fn enum_error(member: &str, value: &str, set: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: {}",
        enum_violation(member, value, set)
    ))
}

/// One enum constraint violation, as a validation error lists it.
pub fn enum_violation(member: &str, value: &str, set: &str) -> String {
    format!(
        "Value '{value}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: {set}"
    )
}

/// Counts the errors inside a successful answer about to be sent: the per-statement errors
/// of a BatchExecuteStatement (a `ThrottlingError` is counted in `throttled_items` when it
/// happens, like an unprocessed BatchWriteItem request).
pub fn count_answer(sim: &Shared, op: Op, out: &Json) {
    if op != Op::BatchExecuteStatement {
        return;
    }
    let responses = out["Responses"].as_array().into_iter().flatten();
    for code in responses.filter_map(|r| r["Error"]["Code"].as_str()) {
        sim.stats.statement_error(code);
    }
}

/// Table names: 3–255 characters of `[a-zA-Z0-9_.-]`.
pub fn check_table_name(name: &str) -> Result<(), ApiError> {
    let constraint = |c: &str| {
        ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at 'tableName' failed to satisfy constraint: {c}"
        ))
    };
    if name.len() < 3 {
        return Err(constraint(
            "Member must have length greater than or equal to 3",
        ));
    }
    if name.len() > 255 {
        return Err(constraint(
            "Member must have length less than or equal to 255",
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(constraint(
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
        ));
    }
    Ok(())
}

/// `{"TableName": .., "CapacityUnits": .., "WriteCapacityUnits": ..}`.
pub fn write_capacity(table: &str, units: u64) -> Json {
    json!({
        "TableName": table,
        "CapacityUnits": units as f64,
        "WriteCapacityUnits": units as f64,
    })
}

/// An empty item, for conditions on items that do not exist.
pub static NO_ITEM: Item = Item::new();

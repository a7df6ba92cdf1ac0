//! Attribute values in DynamoDB JSON (`{"S": "x"}`, `{"NS": ["1"]}`, ...): parsing with
//! DynamoDB's validation rules, the wire form, and the item-size rule behind the 400 KB limit and
//! write-unit accounting.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json};

use crate::error::ApiError;
use crate::number::Number;

/// An item: attribute name → value. Ordered so responses are deterministic.
pub type Item = BTreeMap<String, Value>;

/// DynamoDB nests documents at most this deep.
const MAX_DEPTH: usize = 32;

/// One attribute value. Sets are kept sorted and free of duplicates (input duplicates are
/// rejected), so derived equality is set equality.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    S(String),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null,
    Ss(Vec<String>),
    Ns(Vec<Number>),
    Bs(Vec<Vec<u8>>),
    L(Vec<Value>),
    M(Item),
}

impl Value {
    /// Parses one attribute value from DynamoDB JSON.
    pub fn from_json(json: &Json) -> Result<Value, ApiError> {
        Value::parse(json, 0)
    }

    fn parse(json: &Json, depth: usize) -> Result<Value, ApiError> {
        if depth > MAX_DEPTH {
            return Err(ApiError::validation(
                "Nesting Levels have exceeded supported limits",
            ));
        }
        let Json::Object(map) = json else {
            return Err(ApiError::serialization(
                "Unexpected value type in payload: an AttributeValue must be a JSON object",
            ));
        };
        // Unknown members are ignored, like DynamoDB's deserializer does.
        let mut typed = map.iter().filter(|(k, _)| {
            matches!(
                k.as_str(),
                "S" | "N" | "B" | "BOOL" | "NULL" | "SS" | "NS" | "BS" | "L" | "M"
            )
        });
        let (kind, inner) = match (typed.next(), typed.next()) {
            (None, _) => {
                return Err(ApiError::validation(
                    "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
                ));
            }
            (Some(one), None) => one,
        };
        Ok(match kind.as_str() {
            "S" => Value::S(json_str(inner, "S")?.to_owned()),
            "N" => Value::N(Number::parse(json_str(inner, "N")?)?),
            "B" => Value::B(decode_binary(json_str(inner, "B")?)?),
            "BOOL" => Value::Bool(
                inner
                    .as_bool()
                    .ok_or_else(|| type_error("BOOL", "a boolean"))?,
            ),
            "NULL" => match inner.as_bool() {
                Some(true) => Value::Null,
                Some(false) => {
                    return Err(ApiError::validation(
                        "One or more parameter values were invalid: Null attribute value types must have the value of true",
                    ));
                }
                None => return Err(type_error("NULL", "a boolean")),
            },
            "SS" => Value::Ss(parse_set(inner, "SS", "string", |s| Ok(s.to_owned()))?),
            "NS" => Value::Ns(parse_set(inner, "NS", "number", Number::parse)?),
            "BS" => Value::Bs(parse_set(inner, "BS", "binary", decode_binary)?),
            "L" => {
                let Json::Array(elements) = inner else {
                    return Err(type_error("L", "an array"));
                };
                Value::L(
                    elements
                        .iter()
                        .map(|e| Value::parse(e, depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            "M" => {
                let Json::Object(entries) = inner else {
                    return Err(type_error("M", "an object"));
                };
                Value::M(parse_map(entries, depth + 1)?)
            }
            _ => unreachable!("filtered above"),
        })
    }

    /// The DynamoDB JSON form.
    pub fn to_json(&self) -> Json {
        let mut m = Map::with_capacity(1);
        let (k, v): (&str, Json) = match self {
            Value::S(s) => ("S", s.clone().into()),
            Value::N(n) => ("N", n.to_string().into()),
            Value::B(b) => ("B", BASE64.encode(b).into()),
            Value::Bool(b) => ("BOOL", (*b).into()),
            Value::Null => ("NULL", true.into()),
            Value::Ss(s) => ("SS", s.clone().into()),
            Value::Ns(s) => ("NS", s.iter().map(|n| n.to_string()).collect()),
            Value::Bs(s) => ("BS", s.iter().map(|b| BASE64.encode(b)).collect()),
            Value::L(l) => ("L", l.iter().map(Value::to_json).collect()),
            Value::M(map) => ("M", item_to_json(map)),
        };
        m.insert(k.into(), v);
        Json::Object(m)
    }

    /// The type descriptor DynamoDB uses in messages (`S`, `N`, `SS`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::S(_) => "S",
            Value::N(_) => "N",
            Value::B(_) => "B",
            Value::Bool(_) => "BOOL",
            Value::Null => "NULL",
            Value::Ss(_) => "SS",
            Value::Ns(_) => "NS",
            Value::Bs(_) => "BS",
            Value::L(_) => "L",
            Value::M(_) => "M",
        }
    }

    /// Bytes this value counts towards the item size (the DynamoDB Developer Guide, "Item sizes and formats"): strings as
    /// UTF-8, binary as raw bytes, numbers (digits+1)/2+1, booleans and null 1, sets the sum of
    /// their members, lists and maps 3 bytes plus 1 per element (plus the element's name for maps).
    pub fn size(&self) -> usize {
        match self {
            Value::S(s) => s.len(),
            Value::N(n) => n.size(),
            Value::B(b) => b.len(),
            Value::Bool(_) | Value::Null => 1,
            Value::Ss(s) => s.iter().map(String::len).sum(),
            Value::Ns(s) => s.iter().map(Number::size).sum(),
            Value::Bs(s) => s.iter().map(Vec::len).sum(),
            Value::L(l) => 3 + l.iter().map(|v| v.size() + 1).sum::<usize>(),
            Value::M(m) => 3 + m.iter().map(|(k, v)| k.len() + v.size() + 1).sum::<usize>(),
        }
    }
}

/// Parses an item (`{"name": {"S": "x"}, ...}`).
pub fn parse_item(json: &Json) -> Result<Item, ApiError> {
    let Json::Object(entries) = json else {
        return Err(ApiError::serialization(
            "Unexpected value type in payload: an item must be a JSON object",
        ));
    };
    parse_map(entries, 0)
}

fn parse_map(entries: &Map<String, Json>, depth: usize) -> Result<Item, ApiError> {
    entries
        .iter()
        .map(|(k, v)| Ok((k.clone(), Value::parse(v, depth)?)))
        .collect()
}

/// The DynamoDB JSON form of an item.
pub fn item_to_json(item: &Item) -> Json {
    Json::Object(item.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// Size of an item: for each attribute, the UTF-8 length of its name plus its value's size.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size()).sum()
}

fn type_error(kind: &str, expected: &str) -> ApiError {
    ApiError::serialization(format!(
        "Unexpected value type in payload: the {kind} member must be {expected}"
    ))
}

fn json_str<'a>(json: &'a Json, kind: &str) -> Result<&'a str, ApiError> {
    json.as_str().ok_or_else(|| type_error(kind, "a string"))
}

fn json_strings<'a>(json: &'a Json, kind: &str) -> Result<Vec<&'a str>, ApiError> {
    let Json::Array(members) = json else {
        return Err(type_error(kind, "an array of strings"));
    };
    members.iter().map(|m| json_str(m, kind)).collect()
}

fn decode_binary(text: &str) -> Result<Vec<u8>, ApiError> {
    BASE64
        .decode(text)
        .map_err(|_| ApiError::serialization("Base64 encoded value could not be decoded"))
}

/// A set of `kind` members (`"string"`, `"number"`, `"binary"`) from the JSON array of strings
/// given as `tag` (`SS`, `NS`, `BS`), each member read by `parse`; checked and sorted.
fn parse_set<T: Ord>(
    json: &Json,
    tag: &str,
    kind: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Vec<T>, ApiError> {
    let members = json_strings(json, tag)?;
    let mut set = members
        .iter()
        .map(|s| parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    check_set(kind, &members, &mut set)?;
    Ok(set)
}

/// Rejects empty sets and sets with duplicate members (DynamoDB's messages, including the double
/// space in "An string set  may not be empty"), then sorts the set.
fn check_set<T: Ord>(kind: &str, input: &[&str], set: &mut Vec<T>) -> Result<(), ApiError> {
    if set.is_empty() {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: An {kind} set  may not be empty"
        )));
    }
    set.sort();
    let before = set.len();
    set.dedup();
    if set.len() != before {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: Input collection [{}] contains duplicates.",
            input.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documented_size_example() {
        let item =
            parse_item(&json!({"shirt-color": {"S": "R"}, "shirt-size": {"S": "M"}})).unwrap();
        assert_eq!(item_size(&item), 23);
    }

    #[test]
    fn sizes_per_type() {
        let size = |j: Json| Value::from_json(&j).unwrap().size();
        assert_eq!(size(json!({"S": "héllo"})), 6);
        assert_eq!(size(json!({"B": "AAECAw=="})), 4);
        assert_eq!(size(json!({"N": "12345"})), 4);
        assert_eq!(size(json!({"N": "1"})), 2);
        assert_eq!(size(json!({"N": "-0.00100"})), 2);
        assert_eq!(size(json!({"BOOL": false})), 1);
        assert_eq!(size(json!({"NULL": true})), 1);
        assert_eq!(size(json!({"SS": ["ab", "cde"]})), 5);
        assert_eq!(size(json!({"L": []})), 3);
        assert_eq!(size(json!({"L": [{"S": "ab"}, {"N": "1"}]})), 3 + 3 + 3);
        assert_eq!(size(json!({"M": {"k": {"S": "v"}}})), 3 + 1 + 1 + 1);
    }

    #[test]
    fn set_rules() {
        let err = |j: Json| Value::from_json(&j).unwrap_err().message;
        assert_eq!(
            err(json!({"SS": []})),
            "One or more parameter values were invalid: An string set  may not be empty"
        );
        assert_eq!(
            err(json!({"NS": []})),
            "One or more parameter values were invalid: An number set  may not be empty"
        );
        assert_eq!(
            err(json!({"SS": ["a", "b", "a"]})),
            "One or more parameter values were invalid: Input collection [a, b, a] contains duplicates."
        );
        // Numerically equal members are duplicates too.
        assert!(err(json!({"NS": ["1", "1.0"]})).contains("contains duplicates"));
        assert_eq!(
            Value::from_json(&json!({"SS": ["b", "a"]})).unwrap(),
            Value::from_json(&json!({"SS": ["a", "b"]})).unwrap()
        );
    }

    #[test]
    fn malformed_values() {
        for bad in [
            json!("x"),
            json!({"S": 1}),
            json!({"N": 1}),
            json!({"B": "***"}),
            json!({"SS": "a"}),
            json!({"SS": [1]}),
            json!({"L": {}}),
            json!({"M": []}),
            json!({"BOOL": "true"}),
            json!({"NULL": false}),
            json!({}),
            json!({"S": "a", "N": "1"}),
            json!({"N": "abc"}),
        ] {
            assert!(Value::from_json(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({"S": "x"});
        for _ in 0..40 {
            deep = json!({ "L": [deep] });
        }
        assert!(Value::from_json(&deep).is_err());
    }

    #[test]
    fn round_trip() {
        let j = json!({"M": {"a": {"L": [{"NS": ["2", "1"]}, {"BS": ["AQ=="]}, {"NULL": true}]}}});
        let v = Value::from_json(&j).unwrap();
        assert_eq!(Value::from_json(&v.to_json()).unwrap(), v);
    }
}

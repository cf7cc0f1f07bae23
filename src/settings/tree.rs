//! The merged settings as a value tree that remembers where each value came from, and a serde
//! `Deserializer` over it.
//!
//! The deserializer is lenient about how a scalar is written, since environment variables are
//! all strings (`"300"` is a fine `u64`, `"yes"` a fine `bool`, `5` a fine string), and strict
//! about everything else. Its error type keeps what serde says in structured form (the expected
//! type, the choices of an enum, the unknown or missing field), from which
//! [`validate`](super::validate) writes messages for people.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};

/// One step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// `storage.versioned[0].field`.
pub(crate) fn display_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `storage.redis.url` as steps.
pub(crate) fn parse_path(dotted: &str) -> Vec<Step> {
    dotted.split('.').map(|k| Step::Key(k.to_owned())).collect()
}

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Table(BTreeMap<String, Node>),
    Array(Vec<Node>),
}

/// A value and, for a leaf, where it came from (`environment variable REDIS_DB`, a file path).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    origin: Option<String>,
}

impl Node {
    pub(crate) fn new(kind: Kind, origin: Option<String>) -> Self {
        Self { kind, origin }
    }

    /// Where this value came from; for a table or an array, where its first leaf came from.
    pub(crate) fn origin(&self) -> Option<&str> {
        if let Some(origin) = &self.origin {
            return Some(origin);
        }
        match &self.kind {
            Kind::Table(table) => table.values().find_map(Node::origin),
            Kind::Array(items) => items.iter().find_map(Node::origin),
            _ => None,
        }
    }

    /// The node at `path`.
    pub(crate) fn get(&self, path: &[Step]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        let child = match (&self.kind, first) {
            (Kind::Table(table), Step::Key(key)) => table.get(key),
            (Kind::Array(items), Step::Index(i)) => items.get(*i),
            _ => None,
        }?;
        child.get(rest)
    }

    /// The node at `path`, mutably.
    pub(crate) fn get_mut(&mut self, path: &[Step]) -> Option<&mut Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        let child = match (&mut self.kind, first) {
            (Kind::Table(table), Step::Key(key)) => table.get_mut(key),
            (Kind::Array(items), Step::Index(i)) => items.get_mut(*i),
            _ => None,
        }?;
        child.get_mut(rest)
    }

    /// Replaces the node at `path` with `value`, or removes it when `value` is `None`. Returns
    /// whether anything changed.
    pub(crate) fn replace(&mut self, path: &[Step], value: Option<Node>) -> bool {
        let Some((last, parent)) = path.split_last() else {
            return match value {
                Some(value) if value != *self => {
                    *self = value;
                    true
                }
                _ => false,
            };
        };
        let Some(parent) = self.get_mut(parent) else {
            return false;
        };
        match (&mut parent.kind, last, value) {
            (Kind::Table(table), Step::Key(key), Some(value)) => {
                table.insert(key.clone(), value.clone()) != Some(value)
            }
            (Kind::Table(table), Step::Key(key), None) => table.remove(key).is_some(),
            (Kind::Array(items), Step::Index(i), Some(value)) if *i < items.len() => {
                let changed = items[*i] != value;
                items[*i] = value;
                changed
            }
            (Kind::Array(items), Step::Index(i), None) if *i < items.len() => {
                items.remove(*i);
                true
            }
            _ => false,
        }
    }

    /// How a person would write this value: `"abc"`, `300`, `true`, `a table`.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Nil => "nothing".to_owned(),
            Kind::Bool(b) => b.to_string(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(x) => x.to_string(),
            Kind::Str(s) => format!("{s:?}"),
            Kind::Table(_) => "a table".to_owned(),
            Kind::Array(_) => "an array".to_owned(),
        }
    }

    /// Converts the merged `config` tree. `file` is the origin of values that have none (those
    /// read from the settings file, which `config` reads from a string).
    pub(crate) fn from_config(
        value: config::Value,
        path: &mut Vec<String>,
        file: Option<&str>,
    ) -> Self {
        let origin = match value.origin() {
            // `config::Environment` does not say which variable: the key tells.
            Some("the environment") => Some(format!(
                "environment variable BOTFLEET__{}",
                path.join("__").to_uppercase()
            )),
            Some(other) => Some(other.to_owned()),
            None => file.map(str::to_owned),
        };
        let kind = match value.kind {
            config::ValueKind::Nil => Kind::Nil,
            config::ValueKind::Boolean(b) => Kind::Bool(b),
            config::ValueKind::I64(i) => Kind::Int(i.into()),
            config::ValueKind::I128(i) => Kind::Int(i),
            config::ValueKind::U64(u) => Kind::Int(u.into()),
            config::ValueKind::U128(u) => {
                i128::try_from(u).map_or_else(|_| Kind::Str(u.to_string()), Kind::Int)
            }
            config::ValueKind::Float(x) => Kind::Float(x),
            config::ValueKind::String(s) => Kind::Str(s),
            config::ValueKind::Table(table) => Kind::Table(
                table
                    .into_iter()
                    .map(|(key, value)| {
                        path.push(key.clone());
                        let node = Node::from_config(value, path, file);
                        path.pop();
                        (key, node)
                    })
                    .collect(),
            ),
            config::ValueKind::Array(items) => Kind::Array(
                items
                    .into_iter()
                    .map(|value| Node::from_config(value, path, file))
                    .collect(),
            ),
        };
        let origin = match kind {
            Kind::Table(_) | Kind::Array(_) => None,
            _ => origin,
        };
        Node { kind, origin }
    }

    /// Converts a TOML value (the serialized defaults), without origin.
    pub(crate) fn from_toml(value: toml::Value) -> Self {
        let kind = match value {
            toml::Value::String(s) => Kind::Str(s),
            toml::Value::Integer(i) => Kind::Int(i.into()),
            toml::Value::Float(x) => Kind::Float(x),
            toml::Value::Boolean(b) => Kind::Bool(b),
            toml::Value::Datetime(d) => Kind::Str(d.to_string()),
            toml::Value::Array(items) => {
                Kind::Array(items.into_iter().map(Node::from_toml).collect())
            }
            toml::Value::Table(table) => Kind::Table(
                table
                    .into_iter()
                    .map(|(k, v)| (k, Node::from_toml(v)))
                    .collect(),
            ),
        };
        Node { kind, origin: None }
    }
}

/// What went wrong deserializing, as serde reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeError {
    /// Wrong type or out of range; `expected` is serde's wording (`u64`, `a boolean`, `struct X`).
    Expected(String),
    /// Not one of an enum's variants.
    Variant(&'static [&'static str]),
    /// A field the struct does not have.
    UnknownField(String),
    /// A required field is absent.
    MissingField(&'static str),
    /// Anything else.
    Other(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Expected(expected) => write!(f, "expected {expected}"),
            DeError::Variant(variants) => write!(f, "expected one of {variants:?}"),
            DeError::UnknownField(field) => write!(f, "unknown field {field:?}"),
            DeError::MissingField(field) => write!(f, "missing field {field:?}"),
            DeError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Other(msg.to_string())
    }

    fn invalid_type(_: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::Expected(exp.to_string())
    }

    fn invalid_value(_: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::Expected(exp.to_string())
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::Other(format!("expected {exp}, got {len} elements"))
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        DeError::Variant(expected)
    }

    fn unknown_field(field: &str, _: &'static [&'static str]) -> Self {
        DeError::UnknownField(field.to_owned())
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField(field)
    }
}

/// Deserializes from a borrowed [`Node`].
#[derive(Clone, Copy)]
pub(crate) struct De<'a>(pub(crate) &'a Node);

impl<'de> IntoDeserializer<'de, DeError> for De<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> De<'de> {
    fn unexpected(self) -> de::Unexpected<'de> {
        match &self.0.kind {
            Kind::Nil => de::Unexpected::Unit,
            Kind::Bool(b) => de::Unexpected::Bool(*b),
            Kind::Int(i) => i64::try_from(*i).map_or(
                de::Unexpected::Other("a large integer"),
                de::Unexpected::Signed,
            ),
            Kind::Float(x) => de::Unexpected::Float(*x),
            Kind::Str(s) => de::Unexpected::Str(s),
            Kind::Table(_) => de::Unexpected::Map,
            Kind::Array(_) => de::Unexpected::Seq,
        }
    }

    fn invalid_type<V: Visitor<'de>>(self, visitor: &V) -> DeError {
        de::Error::invalid_type(self.unexpected(), visitor)
    }

    fn visit_int<V: Visitor<'de>>(i: i128, visitor: V) -> Result<V::Value, DeError> {
        if let Ok(i) = i64::try_from(i) {
            visitor.visit_i64(i)
        } else if let Ok(u) = u64::try_from(i) {
            visitor.visit_u64(u)
        } else {
            visitor.visit_i128(i)
        }
    }

    fn visit_table<V: Visitor<'de>>(
        table: &'de BTreeMap<String, Node>,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let mut map = MapDeserializer::new(table.iter().map(|(k, v)| (k.as_str(), De(v))));
        let value = visitor.visit_map(&mut map)?;
        map.end()?;
        Ok(value)
    }

    fn visit_array<V: Visitor<'de>>(items: &'de [Node], visitor: V) -> Result<V::Value, DeError> {
        let mut seq = SeqDeserializer::new(items.iter().map(De));
        let value = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(value)
    }

    fn integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Int(i) => Self::visit_int(*i, visitor),
            Kind::Str(s) => match s.trim().parse::<i128>() {
                Ok(i) => Self::visit_int(i, visitor),
                Err(_) => Err(self.invalid_type(&visitor)),
            },
            _ => Err(self.invalid_type(&visitor)),
        }
    }
}

/// `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, in any case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Nil => visitor.visit_unit(),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Int(i) => Self::visit_int(*i, visitor),
            Kind::Float(x) => visitor.visit_f64(*x),
            Kind::Str(s) => visitor.visit_borrowed_str(s),
            Kind::Table(table) => Self::visit_table(table, visitor),
            Kind::Array(items) => Self::visit_array(items, visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Int(i @ (0 | 1)) => visitor.visit_bool(*i == 1),
            Kind::Str(s) => match parse_bool(s) {
                Some(b) => visitor.visit_bool(b),
                None => Err(self.invalid_type(&visitor)),
            },
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Float(x) => visitor.visit_f64(*x),
            // Precision loss only past 2^53, far beyond any setting.
            #[allow(clippy::cast_precision_loss)]
            Kind::Int(i) => visitor.visit_f64(*i as f64),
            Kind::Str(s) => match s.trim().parse::<f64>() {
                Ok(x) => visitor.visit_f64(x),
                Err(_) => Err(self.invalid_type(&visitor)),
            },
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Str(s) => visitor.visit_borrowed_str(s),
            Kind::Bool(b) => visitor.visit_string(b.to_string()),
            Kind::Int(i) => visitor.visit_string(i.to_string()),
            Kind::Float(x) => visitor.visit_string(x.to_string()),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        Err(self.invalid_type(&visitor))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        Err(self.invalid_type(&visitor))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Nil => visitor.visit_unit(),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Array(items) => Self::visit_array(items, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Table(table) => Self::visit_table(table, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.kind {
            // Unit variants only: every enum of the settings is a plain choice.
            Kind::Str(s) => {
                let variant: StrDeserializer<'_, DeError> = s.as_str().into_deserializer();
                visitor.visit_enum(variant)
            }
            _ => Err(DeError::Variant(variants)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn s(v: &str) -> Node {
        Node::new(Kind::Str(v.to_owned()), None)
    }

    #[test]
    fn scalars_written_as_strings_are_accepted() {
        assert_eq!(u64::deserialize(De(&s(" 300 "))), Ok(300));
        assert_eq!(bool::deserialize(De(&s("Yes"))), Ok(true));
        assert_eq!(bool::deserialize(De(&s("0"))), Ok(false));
        let five = Node::new(Kind::Int(5), None);
        assert_eq!(String::deserialize(De(&five)), Ok("5".to_owned()));
    }

    #[test]
    fn errors_keep_serde_structure() {
        assert_eq!(
            u8::deserialize(De(&Node::new(Kind::Int(300), None))),
            Err(DeError::Expected("u8".to_owned()))
        );
        assert_eq!(
            u64::deserialize(De(&s("abc"))),
            Err(DeError::Expected("u64".to_owned()))
        );
        assert_eq!(
            bool::deserialize(De(&s("maybe"))),
            Err(DeError::Expected("a boolean".to_owned()))
        );
    }

    #[test]
    fn paths_display_like_keys() {
        let path = vec![
            Step::Key("storage".into()),
            Step::Key("versioned".into()),
            Step::Index(0),
            Step::Key("field".into()),
        ];
        assert_eq!(display_path(&path), "storage.versioned[0].field");
    }
}

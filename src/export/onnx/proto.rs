//! The subset of ONNX's protobuf schema (`onnx/onnx.proto`, IR version 8)
//! that an inference graph needs, derived with prost: no protoc, no build
//! script. Tags and enum values are the schema's; the reader in
//! [`super::check`] decodes files with the same types.
//!
//! Singular attribute values are `optional` so that a zero (`keepdims = 0`,
//! `axis = 0`) is written and not dropped as a proto3 default.

use prost::{Message, Oneof};

/// `TensorProto.DataType` values used here.
pub mod elem {
    pub const FLOAT: i32 = 1;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
}

/// `AttributeProto.AttributeType` values used here.
pub mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    pub value: Option<DimValue>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum DimValue {
    #[prost(int64, tag = "1")]
    Value(i64),
    #[prost(string, tag = "2")]
    Param(String),
}

impl TensorProto {
    /// An f32 tensor named `name`.
    pub fn f32(name: &str, dims: &[usize], data: &[f32]) -> Self {
        TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: elem::FLOAT,
            name: name.into(),
            raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// An i64 tensor named `name`.
    pub fn i64(name: &str, dims: &[usize], data: &[i64]) -> Self {
        TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: elem::INT64,
            name: name.into(),
            raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Attribute constructors.
impl AttributeProto {
    fn named(name: &str, r#type: i32) -> Self {
        AttributeProto {
            name: name.into(),
            r#type,
            ..Default::default()
        }
    }
    pub fn int(name: &str, v: i64) -> Self {
        AttributeProto {
            i: Some(v),
            ..Self::named(name, attr_type::INT)
        }
    }
    pub fn float(name: &str, v: f32) -> Self {
        AttributeProto {
            f: Some(v),
            ..Self::named(name, attr_type::FLOAT)
        }
    }
    pub fn string(name: &str, v: &str) -> Self {
        AttributeProto {
            s: Some(v.as_bytes().to_vec()),
            ..Self::named(name, attr_type::STRING)
        }
    }
    pub fn ints(name: &str, v: &[i64]) -> Self {
        AttributeProto {
            ints: v.to_vec(),
            ..Self::named(name, attr_type::INTS)
        }
    }
    pub fn floats(name: &str, v: &[f32]) -> Self {
        AttributeProto {
            floats: v.to_vec(),
            ..Self::named(name, attr_type::FLOATS)
        }
    }
    pub fn tensor(name: &str, t: TensorProto) -> Self {
        AttributeProto {
            t: Some(t),
            ..Self::named(name, attr_type::TENSOR)
        }
    }
}

//! ONNX models as plain data: a graph writer over the maintained prost types
//! of `tract-onnx` (no hand-rolled protobuf), readers for what a model
//! declares, and small sample networks that tests and benchmarks build.

pub mod export;
mod graph;
mod inspect;
pub mod quant;
pub mod samples;

pub use graph::{Attr, Dim, ElemType, GraphBuilder, OPSET, TensorElement, node_scope};
pub use inspect::{DeclaredInput, OnnxError, declared_inputs, decode, encode};
pub use tract_onnx::pb;

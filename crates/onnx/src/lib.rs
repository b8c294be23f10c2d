//! ONNX models as plain data: a graph writer over the maintained prost types
//! of `tract-onnx` (no hand-rolled protobuf), readers for what a model
//! declares, seeded weights, and small sample networks that tests and
//! benchmarks build. No search space here: the architecture exporter and the
//! quantizer are `edgeloop-export`, so the device agent needs only this.

mod graph;
mod inspect;
pub mod samples;
pub mod weights;

pub use graph::{Attr, Dim, ElemType, GraphBuilder, OPSET, TensorElement, conv_attrs, node_scope};
pub use inspect::{DeclaredInput, OnnxError, declared_inputs, decode, encode};
pub use tract_onnx::pb;

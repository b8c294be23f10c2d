//! Writing ONNX graphs node by node.

use crate::pb;
use pb::tensor_shape_proto::{Dimension, dimension};

/// Opset every edgeloop model targets (≥ 13: Clip takes min/max as inputs).
pub const OPSET: i64 = 13;
/// IR version matching opset 13 (ONNX 1.8).
const IR_VERSION: i64 = 7;

/// Element types edgeloop models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    U8,
    I8,
    I32,
    I64,
}

impl ElemType {
    pub fn onnx_code(self) -> i32 {
        use pb::tensor_proto::DataType;
        (match self {
            ElemType::F32 => DataType::Float,
            ElemType::U8 => DataType::Uint8,
            ElemType::I8 => DataType::Int8,
            ElemType::I32 => DataType::Int32,
            ElemType::I64 => DataType::Int64,
        }) as i32
    }

    pub fn from_onnx_code(code: i32) -> Option<ElemType> {
        [ElemType::F32, ElemType::U8, ElemType::I8, ElemType::I32, ElemType::I64]
            .into_iter()
            .find(|t| t.onnx_code() == code)
    }
}

/// Rust types an initializer can hold, with their ONNX element type.
pub trait TensorElement: Copy {
    const ELEM: ElemType;
    fn le_bytes(self) -> impl IntoIterator<Item = u8>;
}

macro_rules! tensor_element {
    ($($ty:ty => $elem:ident),*) => {$(
        impl TensorElement for $ty {
            const ELEM: ElemType = ElemType::$elem;
            fn le_bytes(self) -> impl IntoIterator<Item = u8> {
                self.to_le_bytes()
            }
        }
    )*};
}

tensor_element!(f32 => F32, u8 => U8, i8 => I8, i32 => I32, i64 => I64);

/// One dimension of a declared input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic dimension (`dim_param`), fixed only when the model is run.
    Dynamic(String),
}

impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Dim::Fixed(v)
    }
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

impl Attr {
    fn into_proto(self) -> pb::AttributeProto {
        use pb::attribute_proto::AttributeType;
        let mut a = pb::AttributeProto::default();
        match self {
            Attr::Int(name, v) => {
                a.name = name.into();
                a.r#type = AttributeType::Int as i32;
                a.i = v;
            }
            Attr::Ints(name, v) => {
                a.name = name.into();
                a.r#type = AttributeType::Ints as i32;
                a.ints = v;
            }
            Attr::Float(name, v) => {
                a.name = name.into();
                a.r#type = AttributeType::Float as i32;
                a.f = v;
            }
        }
        a
    }
}

/// Builds one graph; value names are generated so callers only thread them through.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    next_id: usize,
    /// Prefix of the names of the nodes added now (`stage1.block2.3x3_MBConv6`).
    scope: String,
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v as i64),
                Dim::Dynamic(p) => dimension::Value::DimParam(p.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.onnx_code(),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Attributes of a square k×k convolution with "same" padding, shared by
/// Conv and QLinearConv (`edgeloop-export`'s quantized layers).
pub fn conv_attrs(kernel: usize, stride: usize, group: usize) -> Vec<Attr> {
    let (k, pad) = (kernel as i64, (kernel / 2) as i64);
    vec![
        Attr::Ints("kernel_shape", vec![k, k]),
        Attr::Ints("strides", vec![stride as i64, stride as i64]),
        Attr::Ints("pads", vec![pad; 4]),
        Attr::Int("group", group as i64),
    ]
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        GraphBuilder { name: name.into(), ..Default::default() }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// Names the nodes added from now on `<scope>/<op>_<n>`, so that a
    /// runtime's per-node profile can be added up per layer ([`node_scope`]).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    /// Declares a graph input and returns its value name.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `value` as a graph output.
    pub fn output(&mut self, value: &str, elem: ElemType, dims: &[Dim]) {
        self.outputs.push(value_info(value, elem, dims));
    }

    /// Adds an initializer (weights, constants, quantization parameters)
    /// and returns its name.
    pub fn constant<T: TensorElement>(&mut self, hint: &str, dims: &[usize], data: &[T]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "initializer {hint}: dims vs data");
        let name = self.fresh(hint);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: T::ELEM.onnx_code(),
            raw_data: data.iter().flat_map(|v| v.le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    pub fn constant_f32(&mut self, hint: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.constant(hint, dims, &data)
    }

    /// Adds a single-output node and returns the output's name. An empty
    /// string in `inputs` marks an omitted optional input, as ONNX specifies.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let name = self.fresh(op_type);
        // Only the node carries the scope: value names stay plain, because
        // tract resolves outputs selected by name through them.
        let output = format!("{name}_out");
        let node_name = if self.scope.is_empty() { name } else { format!("{}/{name}", self.scope) };
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: node_name,
            op_type: op_type.into(),
            attribute: attrs.into_iter().map(Attr::into_proto).collect(),
            ..Default::default()
        });
        output
    }

    /// 2-D convolution with "same" padding: `weight` is [out, in/group, k, k].
    pub fn conv(
        &mut self,
        x: &str,
        weight: (&[usize; 4], Vec<f32>),
        bias: Vec<f32>,
        stride: usize,
        group: usize,
    ) -> String {
        let (dims, data) = weight;
        let w = self.constant_f32("W", dims, data);
        let b = self.constant_f32("B", &[dims[0]], bias);
        self.node("Conv", &[x, &w, &b], conv_attrs(dims[2], stride, group))
    }

    /// `Clip(x, lo, hi)` with scalar bounds as inputs (opset ≥ 11 form).
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let lo = self.constant_f32("clip_min", &[], vec![lo]);
        let hi = self.constant_f32("clip_max", &[], vec![hi]);
        self.node("Clip", &[x, &lo, &hi], vec![])
    }

    pub fn relu6(&mut self, x: &str) -> String {
        self.clip(x, 0.0, 6.0)
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    pub fn global_average_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![Attr::Int("axis", 1)])
    }

    /// `x · Wᵀ + b` with `weight` as [out, in].
    pub fn gemm(&mut self, x: &str, weight: (&[usize; 2], Vec<f32>), bias: Vec<f32>) -> String {
        let (dims, data) = weight;
        let w = self.constant_f32("W", dims, data);
        let b = self.constant_f32("B", &[dims[0]], bias);
        self.node("Gemm", &[x, &w, &b], vec![Attr::Int("transB", 1)])
    }

    /// The finished model, opset [`OPSET`].
    pub fn finish(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "edgeloop".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(pb::GraphProto {
                name: self.name,
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The scope a node was added in (see [`GraphBuilder::set_scope`]), from
/// its name or a name a runtime derived from it (`stage1.block1.5x5_MBConv6/Conv_7.pad`).
pub fn node_scope(node_name: &str) -> Option<&str> {
    node_name.split_once('/').map(|(scope, _)| scope)
}

//! What a model may ask of the agent, checked before anything is allocated
//! for it (DESIGN §12): the graph's size, what its tensors claim to hold
//! against what they hold, and the bytes of its inputs. A model that fails
//! here is answered 4xx and never reaches a runtime.
//!
//! [`inspect`] is the whole path from bytes to the input shapes a runtime
//! will be fed; `fuzz/` runs it on mutated models.

use std::collections::BTreeMap;

use edgeloop_onnx::pb::tensor_proto::DataType;
use edgeloop_onnx::pb::{self, GraphProto, TensorProto};
use edgeloop_onnx::{DeclaredInput, ElemType, OnnxError};
use serde::{Deserialize, Serialize};

use crate::inputs::{InputError, resolve_shapes};

/// The agent's limits (`serve --max-input-mb`, `--max-nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// All inputs of one measurement together, bytes.
    pub max_input_bytes: u64,
    /// Nodes of the graph and of every subgraph.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_input_bytes: 256 << 20, max_nodes: 50_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the graph has more than {max} nodes (subgraphs included): over this agent's --max-nodes")]
    TooManyNodes { max: usize },
    #[error("the inputs need {need} bytes, over this agent's --max-input-mb of {max_mb} MB")]
    InputTooLarge { need: String, max_mb: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("tensor `{name}` has a negative dimension ({dim})")]
    NegativeDim { name: String, dim: i64 },
    #[error("tensor `{name}` declares more elements than can be counted")]
    Overflow { name: String },
    #[error("tensor `{name}` declares {declared} elements of type {data_type} but holds {held}")]
    Mismatch { name: String, declared: u64, data_type: i32, held: String },
    #[error(
        "tensor `{name}` keeps its data in an external file: upload a model with its weights inside (the agent \
         only reads the model it was sent)"
    )]
    ExternalData { name: String },
    #[error("sparse tensors (`{name}`) are not supported by this agent")]
    Sparse { name: String },
    #[error("input `{name}` has a dimension of 0: there is nothing to time")]
    ZeroDim { name: String },
}

/// Bytes of one element of an ONNX data type; `None` for strings and for
/// types packed below a byte.
fn element_bytes(data_type: i32) -> Option<u64> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Double | Uint64 | Complex64 => 8,
        Complex128 => 16,
        _ => return None,
    })
}

fn elements(name: &str, dims: impl IntoIterator<Item = i64>) -> Result<u64, GraphError> {
    dims.into_iter().try_fold(1u64, |n, dim| {
        let dim = u64::try_from(dim).map_err(|_| GraphError::NegativeDim { name: name.into(), dim })?;
        n.checked_mul(dim).ok_or_else(|| GraphError::Overflow { name: name.into() })
    })
}

/// A tensor must hold what its dims declare: a runtime sizes its buffer
/// from the dims, so 2^40 declared elements over 12 bytes would allocate
/// terabytes.
fn check_tensor(t: &TensorProto) -> Result<(), GraphError> {
    let name = || t.name.clone();
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(GraphError::ExternalData { name: name() });
    }
    let declared = elements(&t.name, t.dims.iter().copied())?;
    let typed = (t.float_data.len()
        + t.int32_data.len()
        + t.string_data.len()
        + t.int64_data.len()
        + t.double_data.len()
        + t.uint64_data.len()) as u64;
    let raw = t.raw_data.len() as u64;
    let fits = if raw > 0 {
        match element_bytes(t.data_type) {
            Some(size) => declared.checked_mul(size) == Some(raw),
            // Sub-byte types pack at most two elements per byte.
            None => declared.div_ceil(2) <= raw,
        }
    } else {
        declared <= typed
    };
    if fits {
        Ok(())
    } else {
        let held = if raw > 0 { format!("{raw} raw bytes") } else { format!("{typed} typed values") };
        Err(GraphError::Mismatch { name: name(), declared, data_type: t.data_type, held })
    }
}

/// Checks every tensor of `graph` and its subgraphs, and adds their nodes to `nodes`.
fn check_graph(graph: &GraphProto, limits: &Limits, nodes: &mut usize) -> Result<(), InspectError> {
    if let Some(sparse) = graph.sparse_initializer.first() {
        let name = sparse.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
        return Err(GraphError::Sparse { name }.into());
    }
    graph.initializer.iter().try_for_each(check_tensor)?;
    *nodes += graph.node.len();
    if *nodes > limits.max_nodes {
        return Err(LimitError::TooManyNodes { max: limits.max_nodes }.into());
    }
    for attr in graph.node.iter().flat_map(|n| &n.attribute) {
        if let Some(sparse) = &attr.sparse_tensor {
            let name = sparse.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
            return Err(GraphError::Sparse { name }.into());
        }
        attr.t.iter().chain(&attr.tensors).try_for_each(check_tensor)?;
        for sub in attr.g.iter().chain(&attr.graphs) {
            check_graph(sub, limits, nodes)?;
        }
    }
    Ok(())
}

/// Why a model was refused by [`inspect`].
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Decode(#[from] OnnxError),
    #[error("malformed model: {0}")]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Input(#[from] InputError),
}

/// The graph's size and its tensors' claims, against `limits`.
pub fn check_model(model: &pb::ModelProto, limits: &Limits) -> Result<(), InspectError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    check_graph(graph, limits, &mut 0)
}

/// The inputs' total bytes, against `limits`.
pub fn check_inputs(resolved: &[(DeclaredInput, Vec<usize>)], limits: &Limits) -> Result<(), InspectError> {
    let mut total: Option<u64> = Some(0);
    for (input, shape) in resolved {
        if shape.contains(&0) {
            return Err(GraphError::ZeroDim { name: input.name.clone() }.into());
        }
        let size: u64 = match input.elem_type {
            ElemType::U8 | ElemType::I8 => 1,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::I64 => 8,
        };
        let bytes = shape.iter().try_fold(size, |n, &d| n.checked_mul(d as u64));
        total = total.zip(bytes).and_then(|(t, b)| t.checked_add(b));
    }
    match total {
        Some(t) if t <= limits.max_input_bytes => Ok(()),
        _ => Err(LimitError::InputTooLarge {
            need: total.map_or_else(|| "more than 2^64".into(), |t| t.to_string()),
            max_mb: limits.max_input_bytes >> 20,
        }
        .into()),
    }
}

/// Bytes → a model whose graph passed [`check_model`]: what an upload checks.
pub fn decode_checked(bytes: &[u8], limits: &Limits) -> Result<pb::ModelProto, InspectError> {
    let model = edgeloop_onnx::decode(bytes)?;
    check_model(&model, limits)?;
    Ok(model)
}

/// Bytes → the shapes a runtime will be fed, every limit checked: decode,
/// graph checks, declared inputs, the request's shapes, input bytes.
pub fn inspect(
    bytes: &[u8],
    requested: &BTreeMap<String, Vec<usize>>,
    limits: &Limits,
) -> Result<Vec<(DeclaredInput, Vec<usize>)>, InspectError> {
    let model = decode_checked(bytes, limits)?;
    let resolved = resolve_shapes(&edgeloop_onnx::declared_inputs(&model)?, requested)?;
    check_inputs(&resolved, limits)?;
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_onnx::samples::MbconvNet;
    use edgeloop_onnx::{Dim, GraphBuilder};

    fn model_with_input(dims: &[i64]) -> Vec<u8> {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", ElemType::F32, &[1.into()]);
        g.output(&x, ElemType::F32, &[1.into()]);
        let mut model = g.finish();
        edgeloop_onnx::samples::set_input_dims(&mut model, dims);
        edgeloop_onnx::encode(&model)
    }

    #[test]
    fn a_good_model_passes() {
        let bytes = edgeloop_onnx::encode(&MbconvNet::small().to_model());
        let resolved = inspect(&bytes, &BTreeMap::new(), &Limits::default()).unwrap();
        assert_eq!(resolved.len(), 1);
    }

    #[test]
    fn huge_and_overflowing_inputs_are_refused_before_allocation() {
        let limits = Limits::default();
        let huge = inspect(&model_with_input(&[1 << 30, 1 << 30]), &BTreeMap::new(), &limits).unwrap_err();
        assert!(matches!(huge, InspectError::Limit(LimitError::InputTooLarge { .. })), "{huge}");
        assert!(huge.to_string().contains("--max-input-mb"), "{huge}");
        let overflow = inspect(&model_with_input(&[i64::MAX, i64::MAX, 4]), &BTreeMap::new(), &limits).unwrap_err();
        assert!(overflow.to_string().contains("more than 2^64"), "{overflow}");
        let zero = inspect(&model_with_input(&[3, 0]), &BTreeMap::new(), &limits).unwrap_err();
        assert!(matches!(zero, InspectError::Graph(GraphError::ZeroDim { .. })), "{zero}");
        let negative = inspect(&model_with_input(&[-4]), &BTreeMap::new(), &limits).unwrap_err();
        assert!(negative.to_string().contains("`x`"), "{negative}");
    }

    #[test]
    fn tensors_must_hold_what_they_declare() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", ElemType::F32, &[Dim::Fixed(3)]);
        let c = g.constant_f32("c", &[3], vec![1.0; 3]);
        let y = g.add(&x, &c);
        g.output(&y, ElemType::F32, &[3.into()]);
        let good = g.finish();
        check_model(&good, &Limits::default()).unwrap();
        let mut liar = good.clone();
        liar.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 20, 1 << 20];
        let err = check_model(&liar, &Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::Graph(GraphError::Mismatch { .. })), "{err}");
        let mut external = good.clone();
        external.graph.as_mut().unwrap().initializer[0].data_location =
            Some(pb::tensor_proto::DataLocation::External as i32);
        let err = check_model(&external, &Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::Graph(GraphError::ExternalData { .. })), "{err}");
    }

    #[test]
    fn node_count_includes_subgraphs() {
        let model = MbconvNet::small().to_model();
        let nodes = model.graph.as_ref().unwrap().node.len();
        check_model(&model, &Limits { max_nodes: nodes, ..Limits::default() }).unwrap();
        let err = check_model(&model, &Limits { max_nodes: nodes - 1, ..Limits::default() }).unwrap_err();
        assert!(err.to_string().contains("--max-nodes"), "{err}");
        let mut nested = model.clone();
        let graph = model.graph.clone().unwrap();
        let host = &mut nested.graph.as_mut().unwrap().node[0];
        host.attribute.push(pb::AttributeProto { name: "body".into(), g: Some(graph), ..Default::default() });
        assert!(check_model(&nested, &Limits { max_nodes: nodes + 1, ..Limits::default() }).is_err());
    }

    /// The fuzz corpus (scripts/fuzz-inspect.sh grows it): every input is
    /// inspected or refused, none panics, and the seeds pass.
    #[test]
    fn the_fuzz_corpus_is_inspected_without_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/inspect");
        let mut passed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            passed += usize::from(inspect(&bytes, &BTreeMap::new(), &Limits::default()).is_ok());
        }
        assert!(passed >= 4, "{passed} corpus models passed inspection");
    }
}

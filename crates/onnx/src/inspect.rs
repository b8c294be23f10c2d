//! Reading what an ONNX model declares, independent of any runtime.

use prost::Message;

use crate::pb;
use crate::{Dim, ElemType};
use pb::tensor_shape_proto::dimension;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ONNX model has no graph")]
    NoGraph,
    #[error("input `{name}` has no tensor type")]
    UntypedInput { name: String },
    #[error("input `{name}` has element type {code}, which edgeloop cannot feed")]
    UnsupportedInputType { name: String, code: i32 },
    #[error("input `{name}` has a dimension of unknown size (neither dim_value nor dim_param)")]
    UnknownDim { name: String },
    #[error("input `{name}` has a negative dimension ({dim})")]
    NegativeDim { name: String, dim: i64 },
}

/// A graph input that is not an initializer: what a runtime must be fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredInput {
    pub name: String,
    pub elem_type: ElemType,
    pub dims: Vec<Dim>,
}

pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Decodes ONNX bytes and checks that there is a graph.
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto, OnnxError> {
    let model = pb::ModelProto::decode(bytes)?;
    if model.graph.is_none() {
        return Err(OnnxError::NoGraph);
    }
    Ok(model)
}

/// The inputs a caller must provide, in graph order. Older exporters list
/// initializers among the inputs; those are skipped.
pub fn declared_inputs(model: &pb::ModelProto) -> Result<Vec<DeclaredInput>, OnnxError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|vi| !initializers.contains(vi.name.as_str()))
        .map(|vi| {
            let name = vi.name.clone();
            let Some(pb::type_proto::Value::TensorType(tensor)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(OnnxError::UntypedInput { name });
            };
            let elem_type = ElemType::from_onnx_code(tensor.elem_type)
                .ok_or_else(|| OnnxError::UnsupportedInputType { name: name.clone(), code: tensor.elem_type })?;
            let dims = tensor
                .shape
                .iter()
                .flat_map(|s| &s.dim)
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) if *v >= 0 => Ok(Dim::Fixed(*v as usize)),
                    Some(dimension::Value::DimValue(v)) => Err(OnnxError::NegativeDim { name: name.clone(), dim: *v }),
                    Some(dimension::Value::DimParam(p)) if !p.is_empty() => Ok(Dim::Dynamic(p.clone())),
                    _ => Err(OnnxError::UnknownDim { name: name.clone() }),
                })
                .collect::<Result<_, _>>()?;
            Ok(DeclaredInput { name, elem_type, dims })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GraphBuilder;

    #[test]
    fn declared_inputs_skip_initializers_and_keep_dynamic_dims() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", ElemType::F32, &[Dim::Dynamic("batch".into()), 3.into()]);
        let c = g.constant_f32("c", &[3], vec![1.0; 3]);
        let y = g.add(&x, &c);
        g.output(&y, ElemType::F32, &[Dim::Dynamic("batch".into()), 3.into()]);
        let mut model = g.finish();
        // Old-style export: the initializer is listed as an input too.
        let graph = model.graph.as_mut().unwrap();
        let as_input = graph.input[0].clone();
        graph.input.push(pb::ValueInfoProto { name: c.clone(), ..as_input });
        let decoded = decode(&encode(&model)).unwrap();
        let inputs = declared_inputs(&decoded).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].name, "x");
        assert_eq!(inputs[0].dims, vec![Dim::Dynamic("batch".into()), Dim::Fixed(3)]);
    }

    #[test]
    fn garbage_is_not_a_model() {
        assert!(decode(&[0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(matches!(decode(&[]), Err(OnnxError::NoGraph)));
    }
}

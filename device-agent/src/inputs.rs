//! Concrete, seeded input tensors for a model's declared inputs.

use std::collections::BTreeMap;

use edgeloop_onnx::{DeclaredInput, Dim, ElemType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

/// One input, ready to feed: shape fully known, values generated.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: InputData,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input `{name}` has dynamic dimension `{dim}`: give its shape in the request's `inputs`")]
    DynamicDim { name: String, dim: String },
    #[error("input `{name}`: requested shape {requested:?} does not fit the declared shape {declared}")]
    ShapeMismatch { name: String, requested: Vec<usize>, declared: String },
    #[error("the request gives a shape for `{name}`, which is not an input of the model (inputs: {inputs})")]
    UnknownInput { name: String, inputs: String },
}

fn describe(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => v.to_string(),
            Dim::Dynamic(p) => p.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Fixes every input's shape: a requested shape must match the declared
/// fixed dims; dynamic dims need a requested shape.
pub fn resolve_shapes(
    declared: &[DeclaredInput],
    requested: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<(DeclaredInput, Vec<usize>)>, InputError> {
    if let Some(name) = requested.keys().find(|n| !declared.iter().any(|d| &d.name == *n)) {
        let inputs = declared.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(InputError::UnknownInput { name: name.clone(), inputs });
    }
    declared
        .iter()
        .map(|input| {
            let shape = match requested.get(&input.name) {
                Some(shape) => {
                    let fits = shape.len() == input.dims.len()
                        && shape.iter().zip(&input.dims).all(|(s, d)| match d {
                            Dim::Fixed(v) => v == s,
                            Dim::Dynamic(_) => true,
                        });
                    if !fits {
                        return Err(InputError::ShapeMismatch {
                            name: input.name.clone(),
                            requested: shape.clone(),
                            declared: describe(&input.dims),
                        });
                    }
                    shape.clone()
                }
                None => input
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(v) => Ok(*v),
                        Dim::Dynamic(p) => Err(InputError::DynamicDim { name: input.name.clone(), dim: p.clone() }),
                    })
                    .collect::<Result<_, _>>()?,
            };
            Ok((input.clone(), shape))
        })
        .collect()
}

/// Random tensors for the resolved inputs: floats in [-1, 1), integers in
/// [0, 16) so that index-like inputs stay small. Same seed, same values.
pub fn random_inputs(resolved: &[(DeclaredInput, Vec<usize>)], seed: u64) -> Vec<InputTensor> {
    let mut rng = SmallRng::seed_from_u64(seed);
    resolved
        .iter()
        .map(|(input, shape)| {
            let len: usize = shape.iter().product();
            let data = match input.elem_type {
                ElemType::F32 => InputData::F32((0..len).map(|_| rng.random_range(-1.0..1.0)).collect()),
                ElemType::U8 => InputData::U8((0..len).map(|_| rng.random_range(0..16)).collect()),
                ElemType::I8 => InputData::I8((0..len).map(|_| rng.random_range(0..16)).collect()),
                ElemType::I32 => InputData::I32((0..len).map(|_| rng.random_range(0..16)).collect()),
                ElemType::I64 => InputData::I64((0..len).map(|_| rng.random_range(0..16)).collect()),
            };
            InputTensor { name: input.name.clone(), shape: shape.clone(), data }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(dims: Vec<Dim>) -> Vec<DeclaredInput> {
        vec![DeclaredInput { name: "x".into(), elem_type: ElemType::F32, dims }]
    }

    #[test]
    fn dynamic_dim_without_shape_names_the_input() {
        let err =
            resolve_shapes(&declared(vec![Dim::Dynamic("batch".into()), 3.into()]), &BTreeMap::new()).unwrap_err();
        assert_eq!(err, InputError::DynamicDim { name: "x".into(), dim: "batch".into() });
        assert!(err.to_string().contains("`x`"));
    }

    #[test]
    fn requested_shape_fills_dynamic_dims_and_must_match_fixed_ones() {
        let d = declared(vec![Dim::Dynamic("batch".into()), 3.into()]);
        let ok = resolve_shapes(&d, &BTreeMap::from([("x".to_string(), vec![4, 3])])).unwrap();
        assert_eq!(ok[0].1, vec![4, 3]);
        let bad = resolve_shapes(&d, &BTreeMap::from([("x".to_string(), vec![4, 2])]));
        assert!(matches!(bad, Err(InputError::ShapeMismatch { .. })));
        let unknown = resolve_shapes(&d, &BTreeMap::from([("y".to_string(), vec![1])]));
        assert!(matches!(unknown, Err(InputError::UnknownInput { .. })));
    }

    #[test]
    fn inputs_are_seeded() {
        let r = resolve_shapes(&declared(vec![2.into(), 3.into()]), &BTreeMap::new()).unwrap();
        assert_eq!(random_inputs(&r, 7), random_inputs(&r, 7));
        assert_ne!(random_inputs(&r, 7), random_inputs(&r, 8));
    }
}

//! Checkpoints as one safetensors file: named f32 tensors (weights,
//! momentum) plus a JSON string of everything else in the header's
//! metadata. Written to a temp file, fsynced and renamed over the old one,
//! so a kill at any moment leaves the previous checkpoint or the new one.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use crate::TrainError;

const META_KEY: &str = "edgeloop";

/// Saves `tensors` and `metadata` (JSON) to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &str) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Checkpoint { path: path.to_path_buf(), message: e.to_string() };
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(&t.flatten(0, -1)).expect("f32 tensor");
            (name.clone(), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v)).map_err(|e| err(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let info = HashMap::from([(META_KEY.to_string(), metadata.to_string())]);
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| err(&e))?;
    edgeloop_durable::write_atomic(path, &bytes).map_err(|e| err(&e))
}

/// The tensors (CPU, f32) and the metadata JSON of a checkpoint.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, String), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Checkpoint { path: path.to_path_buf(), message: e.to_string() };
    let bytes = std::fs::read(path).map_err(|e| err(&e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| err(&e))?;
    let metadata = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| err(&"not an edgeloop checkpoint (no metadata)"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(&e))?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != Dtype::F32 {
                return Err(err(&format!("tensor {name} is {:?}, expected F32", view.dtype())));
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            Ok((name, Tensor::from_slice(&values).reshape(&shape)))
        })
        .collect::<Result<_, _>>()?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape([2, 3]);
        save(&path, &[("a.b".into(), t.shallow_clone())], r#"{"epoch":3}"#).unwrap();
        let (tensors, meta) = load(&path).unwrap();
        assert_eq!(meta, r#"{"epoch":3}"#);
        assert_eq!(tensors["a.b"].size(), vec![2, 3]);
        assert!(tensors["a.b"].equal(&t));
        std::fs::write(&path, b"garbage").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("ckpt.safetensors"), "{e}");
    }
}

//! Architectures of a search space as ONNX models (DESIGN §4): the fp32
//! exporter ([`export`]) and the mixed-precision quantizer with its
//! calibration ([`quant`]). Graph writing and reading is `edgeloop-onnx`.

pub mod export;
pub mod quant;

//! Writes the sample networks as ONNX files: `write_samples DIR`.
//! The quick-start and the agent benchmark measure these.

use edgeloop_onnx::samples::MbconvNet;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "models".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, net) in [("sample-small", MbconvNet::small()), ("sample-large", MbconvNet::large())] {
        let path = dir.join(format!("{name}.onnx"));
        std::fs::write(&path, edgeloop_onnx::encode(&net.to_model()))?;
        println!("{}", path.display());
    }
    Ok(())
}

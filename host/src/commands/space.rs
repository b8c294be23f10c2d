//! `edgeloop space show`: what a search space contains.

use std::fmt::Write;

use clap::{Args, Subcommand};
use edgeloop_space::{Layer, Op, Space};

fn hwc(s: edgeloop_space::Shape) -> String {
    format!("{}x{}x{}", s.height, s.width, s.channels)
}

fn fixed_lines(out: &mut String, title: &str, layers: &[Layer]) {
    for l in layers {
        let _ = writeln!(out, "  {title:<7} {}", l.key());
    }
}

/// The blocks, their candidate ops and the number of architectures.
pub fn render(space: &Space) -> String {
    let spec = &space.spec;
    let zero = space.blocks.iter().filter(|b| b.candidates.contains(&Op::Zero)).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "space {} (width {}): input {}x{}x{}, {} classes",
        spec.name, space.width, spec.input.height, spec.input.width, spec.input.channels, spec.classes
    );
    let _ = writeln!(
        out,
        "{} choice blocks ({zero} may be skipped with `zero`), {} architectures ({:.3e})",
        space.blocks.len(),
        space.num_archs(),
        space.num_archs() as f64
    );
    fixed_lines(&mut out, "fixed", &space.prefix_layers());
    let _ = writeln!(out, "  {:>3}  {:<14} {:>11} {:>11} {:>6}  candidates", "#", "block", "input", "output", "stride");
    for (i, b) in space.blocks.iter().enumerate() {
        let ops: Vec<String> = b.candidates.iter().map(Op::to_string).collect();
        let _ = writeln!(
            out,
            "  {i:>3}  {:<14} {:>11} {:>11} {:>6}  {}",
            b.name,
            hwc(b.input),
            hwc(b.output()),
            b.stride,
            ops.join(" ")
        );
    }
    fixed_lines(&mut out, "fixed", &space.suffix_layers());
    let _ = writeln!(out, "{} distinct latency-table keys", space.all_layers().len());
    out
}

#[derive(Subcommand)]
pub enum SpaceCommand {
    /// Print a space's blocks, candidate ops and number of architectures.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ShowArgs {
    /// Preset (proxyless-mobile, proxyless-cifar, tiny) or path to a space TOML file.
    #[arg(value_name = "NAME|FILE")]
    space: String,
    /// Width multiplier applied to every channel count (rounded to multiples of 8).
    #[arg(long, value_name = "W", default_value_t = 1.0)]
    width: f64,
}

/// `edgeloop space …`.
pub fn execute(command: SpaceCommand) -> anyhow::Result<()> {
    let SpaceCommand::Show(args) = command;
    print!("{}", render(&Space::load(&args.space, args.width)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_blocks_candidates_and_count() {
        let text = render(&Space::load("tiny", 1.0).unwrap());
        assert!(text.contains("4 choice blocks (2 may be skipped with `zero`)"), "{text}");
        assert!(text.contains(&format!("{} architectures", 6 * 7 * 6 * 7)), "{text}");
        assert!(text.contains("stage2.block2") && text.contains("7x7_MBConv6 zero"), "{text}");
        assert!(text.contains("Logits-input:4x4x64-output:10"), "{text}");
    }
}

//! Search spaces as data. A [`Space`] is read from TOML (built-in presets or
//! a user's file); an [`Arch`] picks one [`Op`] per choice block; [`Layer`]s
//! are what an arch decomposes into, each with the ProxylessNAS-style key a
//! latency table is indexed by (DESIGN §2, §3).

mod arch;
mod layer;
mod space;

pub use arch::{Arch, ArchError, Op};
pub use layer::{Layer, LayerKind, Shape};
pub use space::{
    ChoiceBlock, ChoiceSpec, FirstBlockSpec, HeadSpec, InputSpec, Space, SpaceError, SpaceSpec, StageSpec, StemSpec,
    preset_names,
};

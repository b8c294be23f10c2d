//! The data a training run uses: a dataset (`--dataset`) split into weight
//! steps, held-out architecture steps and test, with the input
//! normalisation of the training part.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use edgeloop_data::{BatchLoader, DatasetSpec, ImageShape, LoaderConfig, Normalization, Split};
use edgeloop_space::Space;

/// What training needs of the data: splits on the CPU, normalisation, shape.
pub struct Data {
    pub shape: ImageShape,
    /// Train minus the held-out part: weight steps.
    pub train: Arc<Split>,
    /// Held out from train: arch steps, rewards, candidate accuracy.
    pub holdout: Arc<Split>,
    /// Train and held-out together: the final network's training.
    pub full_train: Arc<Split>,
    pub test: Arc<Split>,
    pub norm: Normalization,
}

impl Data {
    /// The dataset `spec` for `space`, `holdout` training images held out
    /// (0: 10%), split and shuffled with `seed`.
    pub fn load(spec: &str, holdout: usize, seed: u64, space: &Space) -> anyhow::Result<Data> {
        let spec: DatasetSpec = spec.parse()?;
        let input = &space.spec.input;
        let shape = ImageShape { channels: input.channels, height: input.height, width: input.width };
        let dataset = spec.load(shape, seed).with_context(|| format!("loading dataset {spec}"))?;
        ensure!(
            dataset.classes == space.spec.classes,
            "dataset {spec} has {} classes but space {} classifies {}",
            dataset.classes,
            space.name(),
            space.spec.classes
        );
        let holdout = if holdout > 0 { holdout } else { dataset.train.len() / 10 };
        ensure!(holdout < dataset.train.len(), "--holdout {holdout} leaves no training images");
        let full_train = Arc::new(dataset.train.clone());
        let (train, held) = dataset.train.split_off(holdout, seed);
        let norm = train.normalization();
        Ok(Data {
            shape,
            train: Arc::new(train),
            holdout: Arc::new(held),
            full_train,
            test: Arc::new(dataset.test),
            norm,
        })
    }

    pub fn loader(&self, split: &Arc<Split>, batch_size: usize, shuffle: Option<u64>, augment: bool) -> BatchLoader {
        let config = LoaderConfig { batch_size, shuffle_seed: shuffle, augment, drop_last: false, prefetch: 4 };
        BatchLoader::new(split.clone(), self.norm.clone(), config)
    }

    pub fn eval_loader(&self, split: &Arc<Split>) -> BatchLoader {
        self.loader(split, 256, None, false)
    }
}

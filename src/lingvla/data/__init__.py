"""Robot data: LeRobot v3.0/v2.1 datasets, embodiments, normalization, mixtures, the training loader.

Modules (imported on demand, so `import lingvla.data` stays light):
  lerobot      LeRobotDataset (reader), LeRobotDatasetWriter, convert_dataset
  video        VideoEncoder, VideoFrameReader, fit_image (pad | squash)
  transforms   RobotTransform: raw frames/state/actions -> batch contract -> robot units
  embodiments  YAML registry: load_registry, get_embodiment, Embodiment (pack/unpack/dim_mask)
  normalize    Normalizer, pad_to_unified, cut_from_unified
  stats        compute_norm_stats, write_norm_stats (`lingvla stats`)
  config       DataConfig (the `data:` section of a training config)
  samples      SampleSpec, RobotDataset, collate (the batch contract of lingvla.batch)
  mixture      make_dataloader, MixtureSampler, ResumableLoader
  errors       BadSampleError, VideoDecodeError, NonFiniteValueError, EmbodimentMismatchError, ...
See docs/data.md.
"""

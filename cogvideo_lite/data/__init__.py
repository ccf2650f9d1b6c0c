"""The data layer: captions files, decord video reading, clip and frame datasets, media writers, the built-in
shapes dataset and a dataset checker. Import from the submodules (`captions`, `video`, `datasets`, `media`,
`shapes`, `check`); this package re-exports nothing.
"""

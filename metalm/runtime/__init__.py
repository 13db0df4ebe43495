"""The runtime every floor of metalm may use: files written atomically (:mod:`.files`), checkpoints
(:mod:`.checkpoint`), what long runs meet (:mod:`.longrun`: signals, a second launch, a full disk), a
long run's state kept in the repository (:mod:`.runstate`), processes under torchrun
(:mod:`.distributed`) and the versions a result records (:mod:`.environment`). Nothing here is
imported by this ``__init__``: each module is imported by name."""

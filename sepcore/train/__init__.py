"""Training without Ray: configuration sections (:mod:`.config`), steps and epochs
(:mod:`.loop`), the per-worker loop (:mod:`.worker`), a training output's manifest,
history and ``best/`` (:mod:`.outputs`), and the one best-checkpoint rule (:mod:`.selection`)."""

"""The tune job without Ray: configuration sections (:mod:`.config`), data variants, trial
settings, tables and plots (:mod:`.sweep`), trial records, results and report (:mod:`.results`)."""

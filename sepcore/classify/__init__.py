"""Instrument presence on 1-second snippets (seed 000), without Ray.

``config`` (sections, :class:`~sepcore.classify.config.SnippetSpec`), ``snippets``
(windows, labels, splits), ``features``, ``track`` (one track's snippet file), ``lgbm``,
``classifier`` (saved model, prediction), ``roc``, ``cnn`` (activation CNN scores),
``report`` (metrics.json, figures, report); ``style`` (``labels: style``: a track's style on
every snippet, the vote of a song's snippets) and ``router`` (a song to a group of styles by
that vote).
"""

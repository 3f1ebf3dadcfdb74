"""The one apply (chunked masks, overlap-add) and batch separation of a library."""

"""Wire codecs: pure functions and msgspec types, bytes in, events out; no trio, no quart."""

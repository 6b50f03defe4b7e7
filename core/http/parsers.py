"""Request body parsing."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing a body nested too deeply to decode as malformed (a 400).

    Python's decoder recurses once per nesting level, so `[[[[...]]]]` a few
    thousand levels deep (a few kilobytes) raises RecursionError, which DRF's
    parser does not catch: without this it is a 500.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None

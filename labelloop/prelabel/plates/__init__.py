"""Chinese licence plates: syntax (what a plate number may be) and the CPU recognizer."""

from labelloop.prelabel.plates.syntax import PlateSyntax, colour_problem, is_valid_plate, normalise_plate, parse_plate

__all__ = ["PlateSyntax", "colour_problem", "is_valid_plate", "normalise_plate", "parse_plate"]

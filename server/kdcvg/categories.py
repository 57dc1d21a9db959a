"""Product categories: the six InnoAds-32K domains, by short name and by proto enum value."""

from __future__ import annotations

from kdcvg.v1 import common_pb2

# Short names are what the data module, payloads and the CLI use.
BY_ENUM: dict[int, str] = {
    common_pb2.CATEGORY_FOOD_BEVERAGES: "food_beverages",
    common_pb2.CATEGORY_FASHION_LUXURY: "fashion_luxury",
    common_pb2.CATEGORY_HOME_APPLIANCES: "home_appliances",
    common_pb2.CATEGORY_LIFESTYLE_LEISURE: "lifestyle_leisure",
    common_pb2.CATEGORY_ELECTRONICS_MOBILITY: "electronics_mobility",
    common_pb2.CATEGORY_BEAUTY_HEALTH: "beauty_health",
}
BY_NAME: dict[str, int] = {name: value for value, name in BY_ENUM.items()}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def parse(value: str | int) -> int:
    """Enum value of a category given as enum int, enum name or short name; ValueError otherwise."""
    if isinstance(value, int):
        if value in BY_ENUM:
            return value
        raise ValueError(f"unknown category {value}; valid: {', '.join(NAMES)}")
    key = value.strip().lower().removeprefix("category_")
    if key in BY_NAME:
        return BY_NAME[key]
    raise ValueError(f"unknown category {value!r}; valid: {', '.join(NAMES)}")

"""Component ids of the screen, defined once: layouts and callbacks both import them."""

INTERVAL = "tick"

CLOCK = "header-clock"
FRESHNESS = "header-freshness"
SUMMARY = "header-summary"

LINE_TILES = "line-tiles"

ACTIVE_ALERTS = "alerts-active"
ACTIVE_ALERTS_COUNT = "alerts-active-count"
CLEARED_ALERTS = "alerts-cleared"

UNIT_SELECT = "trend-unit"
TREND_GRAPH = "trend-graph"
TREND_STATE = "trend-state"
TREND_CAPTION = "trend-caption"

"""Component ids of the screen, defined once: layouts and callbacks both import them."""

INTERVAL = "tick"

# --- the page shell: routing between the overview and the line pages, the critical cue ----------

URL = "url"
PAGE = "page"
SHELL_TICK = "shell-tick"
CRITICAL_BANNER = "critical-banner"
CRITICAL_BANNER_TEXT = "critical-banner-text"
CRITICAL_NEW = "critical-new"  # the critical alarms that appeared at the last tick (for the beep)
HEADER_KEY = "header-key"
CRITICAL_SEEN = "critical-seen"  # the critical alarms the operator has marked as seen
CRITICAL_SEEN_BUTTON = "critical-seen-button"
CRITICAL_NOW = "critical-now"  # the unacknowledged critical alarms at the last tick
CRITICAL_SOUND = "critical-sound"
CRITICAL_SOUND_DONE = "critical-sound-done"
TILE_KEYS = "tile-keys"
ALERTS_KEY = "alerts-key"

# --- the line page (/line/<line id>) ------------------------------------------------------------

LINE_TICK = "line-tick"
LINE_ID = "line-id"
LINE_TREND_STATE = "line-trend-state"
LINE_STATUS = "line-status"
LINE_STATUS_KEY = "line-status-key"
LINE_CAPTION = "line-caption"
LINE_UNIT_GRAPH = "line-unit-graph"  # pattern-matching type, one per unit: {"type": ..., "unit": unit id}

CLOCK = "header-clock"
FRESHNESS = "header-freshness"
SUMMARY = "header-summary"

LINE_TILES = "line-tiles"

ACTIVE_ALERTS = "alerts-active"
ACTIVE_ALERTS_COUNT = "alerts-active-count"
CLEARED_ALERTS = "alerts-cleared"


# --- the alarm console (/alarms/) ---------------------------------------------------------------

CONSOLE_TICK = "console-tick"
CONSOLE_VERSION = "console-version"  # bumped by each operator action, so views refresh at once
CONSOLE_ROWS_KEY = "console-rows-key"
CONSOLE_SEEN_CRITICAL = "console-seen-critical"
CONSOLE_NEW_CRITICAL = "console-new-critical"
CONSOLE_SOUND_DONE = "console-sound-done"
CONSOLE_CLOCK = "console-clock"
CONSOLE_SUMMARY = "console-summary"
CONSOLE_CUE = "console-critical-cue"
CONSOLE_SOUND = "console-sound"
CONSOLE_VIEW = "console-view"
CONSOLE_PRIORITIES = "console-priorities"
CONSOLE_QUICK_FILTER = "console-quick-filter"
CONSOLE_COUNT = "console-count"
CONSOLE_GRID = "console-grid"
CONSOLE_SELECTED = "console-selected"
CONSOLE_USER = "console-user"
CONSOLE_ACK_COMMENT = "console-ack-comment"
CONSOLE_ACK = "console-ack"
CONSOLE_SHELVE_MINUTES = "console-shelve-minutes"
CONSOLE_SHELVE_REASON = "console-shelve-reason"
CONSOLE_SHELVE = "console-shelve"
CONSOLE_UNSHELVE = "console-unshelve"
CONSOLE_RESULT = "console-result"
CONSOLE_JOURNAL_SEARCH = "console-journal-search"
CONSOLE_JOURNAL = "console-journal"
CONSOLE_JOURNAL_KEY = "console-journal-key"

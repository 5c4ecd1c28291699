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

"""One module per tab; each has TAB (its id), TITLE, DEFAULT_MODEL and ``build(default_model)``.

A technique's tab is added by writing its module here and listing it in TABS (in display order).
"""

from . import attention, layout, multiview, novel_view, sign, style, video

TABS = (layout, attention, style, sign, video, novel_view, multiview)

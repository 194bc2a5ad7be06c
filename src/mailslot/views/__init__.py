"""What the front doors show, said once for all of them.

``model`` is a message, task, thread or reservation as JSON (what the tools answer, and what
``--json`` and the console show); ``parameters`` the tools' inputs as the model reads them;
``transcript`` a thread as one Markdown or HTML document; ``terminal`` what a terminal shows.
"""

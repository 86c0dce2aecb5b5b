"""The `pyodide` names Python Workers commonly import, for CPython on edgepop.

Cloudflare runs Python Workers in Pyodide, where Python values are converted to and
from JavaScript. On edgepop there is no JavaScript: values stay Python, so `to_js` and
the proxy helpers of `pyodide.ffi` hand back what they are given.
"""

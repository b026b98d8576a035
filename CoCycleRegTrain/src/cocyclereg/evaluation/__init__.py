"""Measuring a registration: overlap and distance metrics, tissue labels, the evaluate command's
report and figures."""

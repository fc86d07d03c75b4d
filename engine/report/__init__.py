"""Exports of a profile: the HTML bottleneck report, CSV, Chrome trace, Model Explorer node data.

The JSON form of a profile is `engine.profile.Profile.save_json` (schema layerscope.profile/1).
"""
from engine.report.exports import (chrome_trace, csv_text, model_explorer_node_data, write_chrome_trace,
                                   write_csv, write_model_explorer)
from engine.report.html_report import html_report, write_html

__all__ = ["chrome_trace", "csv_text", "model_explorer_node_data", "write_chrome_trace", "write_csv",
           "write_model_explorer", "html_report", "write_html"]

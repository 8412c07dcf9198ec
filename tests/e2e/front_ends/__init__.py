"""The typewriter front ends in headless Chromium: streaming, markdown, runs, the stats page."""

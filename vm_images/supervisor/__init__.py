"""The in-sandbox supervisor: PID 1, dials the host and serves exec, processes and files.

Standard library only: it runs on the image's python3 and never imports host code.
"""

"""The GPU side of lrprobe: the numeric core (`worker.newton`) and safe model/data intake."""

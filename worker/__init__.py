"""The GPU side of lrprobe: the numeric core (`lrprobe.worker.newton`) and safe model/data
intake."""

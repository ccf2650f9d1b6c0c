from cogvideo_lite.evaluate.command import main

main()

from cogvideo_lite.evaluate.shapes import main

main()

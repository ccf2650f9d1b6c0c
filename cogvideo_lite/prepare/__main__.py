from cogvideo_lite.prepare.prepare import main

main()

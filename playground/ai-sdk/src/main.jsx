import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import '../../shared/style.css'; // the front ends' one stylesheet: they look alike
import AiSdkChat from './AiSdkChat.jsx';

createRoot(document.getElementById('app')).render(<StrictMode><AiSdkChat /></StrictMode>);

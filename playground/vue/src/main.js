import { createApp } from 'vue';
import '../../shared/style.css'; // the three front ends' one stylesheet: they look alike
import TokenStreamChat from './TokenStreamChat.vue';

createApp(TokenStreamChat).mount('#app');
